"""The M-FALCON benchmark's FLOP model: the useful matmul FLOPs of the HSTU encoder, of each scoring method, and
the FLOP-ratio bound of each method's speedup over naive scoring."""


def hstu_flops(tokens, attn_pairs, dim, num_layers, embedding=True):
    """Matmul FLOPs of the HSTU encoder on ``tokens`` tokens with ``attn_pairs`` valid (query, key) pairs.

    Per token: the input embedding MLP ``Linear(2D, D) -> SiLU -> Linear(D, D)`` = 2*2D*D + 2*D*D = 6 D^2
    (if ``embedding``), and per layer the projections ``Linear(D, 4D)`` + ``Linear(D, D)`` = 2*D*4D + 2*D*D =
    10 D^2. Per layer and valid pair: q.k and a*v, 2 * 2 * H * d = 4 D FLOPs (H * d = D, so the head count
    does not matter). Elementwise work (SiLU, bias lookups, LayerNorm) is left out::

        F = tokens * (6 D^2 + num_layers * 10 D^2) + num_layers * 4 D * attn_pairs
    """
    per_token = (6 * dim * dim if embedding else 0) + num_layers * 10 * dim * dim
    return tokens * per_token + num_layers * 4 * dim * attn_pairs


def flop_counts(history, dim, num_layers, embedding=True):
    """The useful FLOPs of each method for one user with history h (``hstu_flops``' formula).

    full forward of history + 1 candidate (naive, per candidate): n = h + 1 tokens, causal pairs
        sum_{i=1..n} i = n (n + 1) / 2 (the candidate sees the h history tokens and itself, like a last row);
    one cached candidate step (M-FALCON, per candidate): 1 token, h + 1 pairs (history + itself);
    prefill: h tokens, h (h + 1) / 2 pairs;
    one pass with m candidates: h + m tokens, h (h + 1) / 2 + m (h + 1) pairs.

    The bound of M-FALCON scoring is ``full / step``; at h = 199, D = 64, 2 layers it is 151.2x with the
    embedding MLP (144.7x for the blocks alone).
    """
    n = history + 1
    full = hstu_flops(n, n * (n + 1) // 2, dim, num_layers, embedding)
    step = hstu_flops(1, history + 1, dim, num_layers, embedding)
    prefill = hstu_flops(history, history * (history + 1) // 2, dim, num_layers, embedding)
    return dict(full_forward=full, cached_step=step, prefill=prefill, bound_scoring=full / step)


def one_pass_flops(history, m, dim, num_layers, embedding=True):
    return hstu_flops(history + m, history * (history + 1) // 2 + m * (history + 1), dim, num_layers, embedding)


def method_bound(method, m, history, dim, num_layers):
    """m * F(full forward) / F(method at m): the speedup over naive if every FLOP cost the same."""
    f = flop_counts(history, dim, num_layers)
    if method == "naive":
        return 1.0
    if method == "one-pass":
        return m * f["full_forward"] / one_pass_flops(history, m, dim, num_layers)
    if method == "mfalcon-scoring":
        return f["bound_scoring"]
    if method == "mfalcon-prefill+scoring":
        return m * f["full_forward"] / (f["prefill"] + m * f["cached_step"])
    raise ValueError(method)

