"""Top-K retrieval over a whole catalogue with a tower model's MaxSim score, and its quality metrics.

A tower model scores (user, item) as sigmoid(sum over user heads of max over item heads of
<u, v> + bias) (model.py); the ranking only needs the MaxSim logit, the sum of maxima.

- exact_top_k: the MaxSim logit of every (user, item) pair (serving.maxsim_logits, on the item
  heads laid out item-head first, serving.by_head), in blocks of users x items (memory bounded), a
  running top K per user, each user's excluded items (their training items) left out.
- HeadIndex: every item head in a faiss inner-product index, its id the head's position in the
  [N * V] rows of the item heads, so id // V is the item's row. A user's heads ask for k' nearest
  item heads each on average, the budget shared out in proportion to their norms, the union of
  their items is rescored with the exact MaxSim, the top K returned. A flat index searches each
  head exactly; IVF and HNSW approximately, for large catalogues.
- recall_at_k / ndcg_at_k: of each user's relevant items (positive test items, or another
  ranking's top items), per user.

numpy and faiss only: retrieve.py and benchmarks/ bring the heads (from the exported MindIR files or
the checkpoint's network).
"""
import faiss
import numpy as np

from serving import maxsim_logits

# exact_top_k's blocks: this many items at a time, and as many users as keep the similarities of a
# block (user heads x item heads) within BLOCK_FLOATS float32 values
ITEM_BLOCK = 8192
BLOCK_FLOATS = 1 << 24
# The index settings, chosen with benchmarks/bench_retrieval.py (README, Retrieval). Below
# INDEX_MIN_VECTORS item heads an exact scan is faster than an index search (the crossover lies
# between the catalogue sizes measured): HeadIndex "auto" builds a flat index there (an exact search
# per head) and IVF_KIND above, and retrieve.py scans exactly there. A user head asks for NEIGHBOURS
# (k') nearest item heads and IVF searches IVF_PROBES lists for it, on average over the user's heads
# (HeadIndex.candidates shares both out by head norm): the fastest setting measured that keeps 0.95
# of the exact top 100 at 1,000,000 items.
INDEX_MIN_VECTORS = 50_000
NEIGHBOURS = 400
IVF_KIND = "ivf_sq8"
IVF_PROBES = 24  # nprobe
IVF_TRAIN_PER_LIST = 40  # k-means training vectors per list (faiss warns below 39)
HNSW_LINKS = 32  # HNSW's M: links per vector
HNSW_EF_CONSTRUCTION = 80


def ivf_lists(vectors):
    """IVF's default list count: sqrt(vectors) rounded to a power of two."""
    return 2 ** max(0, round(np.log2(np.sqrt(vectors))))


def share_out(total, weights):
    """`total` as whole numbers in proportion to `weights` (largest remainders), summing to `total`."""
    exact = total * weights / weights.sum()
    whole = np.floor(exact).astype(np.int64)
    whole[np.argsort(whole - exact, kind="stable")[:total - whole.sum()]] += 1
    return whole


def probability(logits, bias):
    """The model's click probability from MaxSim logits and its bias (the exported scorer's output)."""
    return 1.0 / (1.0 + np.exp(-(logits + bias)))


def top_k_of(scores, rows, k):
    """The k best of each row of `scores` [B, M] (ties: the lower item row first), with the item rows
    `rows` [B, M] they belong to -> (rows [B, k], scores [B, k]), best first."""
    if scores.shape[1] > k:
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def exclusion_pairs(exclude, users):
    """(position in `users`, item row) of every excluded pair of `users` (indices into `exclude`)."""
    counts = np.array([0 if exclude is None else len(exclude[u]) for u in users], dtype=np.int64)
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.repeat(np.arange(len(users)), counts), np.concatenate([exclude[u] for u in users]).astype(np.int64)


def exact_top_k(user_heads, item_heads_by_head, k, exclude=None):
    """Each user's k items of highest MaxSim logit over the whole catalogue.

    user_heads [B, U, d], item_heads_by_head [V, N, d] (serving.by_head), exclude: None or B arrays
    of item rows to leave out (a user's training items). -> (rows [B, k] int64, logits [B, k]
    float32), best first; a user with fewer than k items left gets row -1 and logit -inf in the
    remaining places.
    """
    users, user_head_num, _ = user_heads.shape
    item_head_num, items, _ = item_heads_by_head.shape
    item_block = min(items, ITEM_BLOCK)
    user_block = max(1, BLOCK_FLOATS // (user_head_num * item_head_num * item_block))
    best_rows = np.empty((users, k), np.int64)
    best_logits = np.empty((users, k), np.float32)
    for user_start in range(0, users, user_block):
        batch = np.arange(user_start, min(user_start + user_block, users))
        excluded_user, excluded_item = exclusion_pairs(exclude, batch)
        rows = np.full((len(batch), k), -1, np.int64)
        logits = np.full((len(batch), k), -np.inf, np.float32)
        for item_start in range(0, items, item_block):
            item_stop = min(item_start + item_block, items)
            block = maxsim_logits(user_heads[batch], item_heads_by_head[:, item_start:item_stop])
            inside = (excluded_item >= item_start) & (excluded_item < item_stop)
            block[excluded_user[inside], excluded_item[inside] - item_start] = -np.inf
            block_rows = np.broadcast_to(np.arange(item_start, item_stop), block.shape)
            rows, logits = top_k_of(np.concatenate([logits, block], 1), np.concatenate([rows, block_rows], 1), k)
        rows[~np.isfinite(logits)] = -1
        best_rows[batch], best_logits[batch] = rows, logits
    return best_rows, best_logits


class HeadIndex:
    """Every item head in a faiss inner-product index, for the approximate top K.

    kind "flat": exact search per head; "ivf": IndexIVFFlat, `lists` inverted lists (default
    ivf_lists), `probes` of them searched per user head on average (nprobe, default IVF_PROBES);
    "ivf_sq8": the same with each vector stored in 8 bits per dimension (IndexIVFScalarQuantizer: a
    quarter of the memory traffic; the candidates are rescored with the float heads anyway); "hnsw":
    IndexHNSWFlat, HNSW_LINKS links per vector, `probes` = efSearch (default: a head's k'), on L2
    after the usual reduction of inner product search to it (HNSW's graph assumes a metric): each
    item head gets an extra coordinate sqrt(M^2 - |v|^2), M the largest norm, each query a 0, so
    that |q - v|^2 = |q|^2 + M^2 - 2 <q, v>. "auto": flat below INDEX_MIN_VECTORS item heads, IVF_KIND above.
    """

    def __init__(self, item_heads, kind="auto", lists=None, probes=None, seed=0):
        items, self.heads_per_item, dim = item_heads.shape
        # the exact rescoring gathers its candidates' rows from the caller's array: no copy of the
        # catalogue's heads beside the one faiss keeps
        self.item_heads = item_heads
        vectors = np.ascontiguousarray(item_heads.reshape(items * self.heads_per_item, dim), dtype=np.float32)
        if kind == "auto":
            kind = "flat" if len(vectors) < INDEX_MIN_VECTORS else IVF_KIND
        self.kind = kind
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind in ("ivf", "ivf_sq8"):
            lists = lists or ivf_lists(len(vectors))
            quantizer = faiss.IndexFlatIP(dim)  # faiss's Python layer keeps it alive with the index
            self.index = (faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT) if kind == "ivf" else
                          faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                                        faiss.METRIC_INNER_PRODUCT))
            sample = np.random.default_rng(seed).permutation(len(vectors))[:lists * IVF_TRAIN_PER_LIST]
            self.index.cp.seed = seed
            self.index.train(vectors[np.sort(sample)])
        elif kind == "hnsw":
            squared_norms = (vectors.astype(np.float64) ** 2).sum(axis=1)
            vectors = np.hstack([vectors, np.sqrt(squared_norms.max() - squared_norms)[:, None].astype(np.float32)])
            self.index = faiss.IndexHNSWFlat(dim + 1, HNSW_LINKS)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            raise ValueError(f"unknown index kind {kind!r}")
        self.index.add(vectors)
        self.probes = IVF_PROBES if kind in ("ivf", "ivf_sq8") else 0
        if probes is not None:
            self.set_probes(probes)

    def set_probes(self, probes):
        """IVF: lists searched per user head on average (nprobe); HNSW: the search's candidate list
        (efSearch), also on average."""
        self.probes = probes

    def memory_bytes(self):
        """The index's size as faiss serialises it (vectors, lists or links)."""
        return int(faiss.serialize_index(self.index).nbytes)

    def candidates(self, user_heads, neighbours):
        """The item rows each user's heads reach: user_heads [B, U, d], `neighbours` (k') nearest item
        heads per user head on average -> B arrays of unique item rows. A user's budget of
        neighbours, and of probes, is shared out over their heads in proportion to the heads' norms:
        a head's inner products, and so its part of every MaxSim score, scale with its norm, so the
        long heads decide the top K (README, Retrieval). An all-zero head (the ReLU of IntTower's
        user FE projections makes some) adds 0 to every item's score, so it is not searched."""
        reached = []
        for heads in np.asarray(user_heads, np.float32):
            norms = np.sqrt((heads.astype(np.float64) ** 2).sum(axis=1))
            searched = np.flatnonzero(norms > 0)
            weights = norms[searched]
            head_neighbours = share_out(neighbours * len(searched), weights)
            head_probes = np.maximum(1, share_out(self.probes * len(searched), weights))
            items = [self.search(heads[head], head_k, head_p) // self.heads_per_item
                     for head, head_k, head_p in zip(searched, head_neighbours, head_probes) if head_k > 0]
            reached.append(np.unique(np.concatenate(items)) if items else np.zeros(0, np.int64))
        return reached

    def search(self, head, neighbours, probes):
        """One user head's `neighbours` nearest item heads' ids (faiss's -1 padding left out), the
        index searching `probes` lists (IVF) or a candidate list that long (HNSW, at least k')."""
        query, params = head[None], None
        if self.kind == "hnsw":  # the extra coordinate of the L2 reduction
            query = np.append(head, np.float32(0))[None]
            params = faiss.SearchParametersHNSW(efSearch=int(max(probes, neighbours)))
        elif self.kind != "flat":
            params = faiss.SearchParametersIVF(nprobe=int(min(probes, self.index.nlist)))
        ids = self.index.search(query, int(neighbours), params=params)[1][0]
        return ids[ids >= 0]

    def top_k(self, user_heads, k, neighbours, exclude=None):
        """exact_top_k's result for the union of each user's candidates: the candidates rescored with
        the exact MaxSim, the excluded rows left out, the k best returned (row -1 and logit -inf where
        fewer than k candidates remain)."""
        rows = np.full((len(user_heads), k), -1, np.int64)
        logits = np.full((len(user_heads), k), -np.inf, np.float32)
        for user, found in enumerate(self.candidates(user_heads, neighbours)):
            if exclude is not None:
                found = found[~np.isin(found, exclude[user])]
            found_logits = maxsim_logits(user_heads[user:user + 1], np.swapaxes(self.item_heads[found], 0, 1))
            best_rows, best_logits = top_k_of(found_logits, found[None], k)
            rows[user, :best_rows.shape[1]], logits[user, :best_rows.shape[1]] = best_rows[0], best_logits[0]
        return rows, logits


def recall_at_k(ranked, relevant, k):
    """Per user, the share of their relevant items found in the first k of their ranking.
    ranked [B, >= k] item rows best first (-1 = empty place); relevant: B arrays, none empty."""
    return np.array([np.isin(relevant[u], ranked[u, :k]).sum() / len(relevant[u]) for u in range(len(ranked))])


def ndcg_at_k(ranked, relevant, k):
    """Per user, the binary-relevance NDCG of the first k of their ranking: the sum of 1 / log2(rank + 1)
    over the relevant items found (rank 1 = first), over the same sum for a ranking that puts
    min(k, number relevant) relevant items first."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    scores = np.empty(len(ranked))
    for u in range(len(ranked)):
        hits = np.isin(ranked[u, :k], relevant[u])
        scores[u] = discount[:len(hits)][hits].sum() / discount[:min(k, len(relevant[u]))].sum()
    return scores
