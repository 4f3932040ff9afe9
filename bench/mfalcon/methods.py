"""The model the M-FALCON benchmark runs and the three ways it scores one user's candidates (naive per-candidate
forwards, one target-aware pass, M-FALCON prefill + cached scoring), and ``backends_ran``, which records the
attention backends a call actually used."""

import os
import sys


def make_model(torch, num_items, args, max_seq_len, fused, device, seed):
    """A random ``HSTURecommender`` in eval mode, bias tables filled with small random values."""
    from hstu.model import HSTURecommender, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=num_items, dim=args.dim, num_layers=args.layers, num_heads=args.heads,
                      max_seq_len=max_seq_len, fused=fused)
    model = HSTURecommender(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.encoder.blocks:
            block.bias.pos_weight.copy_(0.1 * torch.randn(block.bias.pos_weight.shape, generator=g))
            block.bias.time_weight.copy_(0.1 * torch.randn(block.bias.time_weight.shape, generator=g))
    return model.to(device).eval(), cfg


def backends_ran(fn):
    """Run ``fn`` once and return, per op under hstu_kernels/ops (``hstu_attention``, ``hstu_cached_attention``),
    which backends actually ran: "torch" when a ``naive_*`` function was entered, "triton" / "cuda" when a
    function with that word in its name was (the dispatch's capability probes, ``unsupported_reasons`` and the
    like, do not count)."""
    import hstu_kernels

    ops = os.path.join(os.path.dirname(os.path.abspath(hstu_kernels.__file__)), "ops") + os.sep
    seen = set()

    def prof(frame, event, arg):
        if event == "call":
            f = frame.f_code.co_filename
            if f.startswith(ops):
                seen.add((f[len(ops):].split(os.sep)[0], frame.f_code.co_name))

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    ran = {}
    for op, name in seen:
        low = name.lower()
        if "reason" in low or "available" in low:
            continue
        for backend, hit in (("torch", low.startswith("naive_")), ("triton", "triton" in low), ("cuda", "cuda" in low)):
            if hit:
                ran.setdefault(op, set()).add(backend)
    return {op: sorted(b) for op, b in sorted(ran.items())}


class Methods:
    """The naive, one-pass and M-FALCON scoring of one user's history against candidate item ids."""

    def __init__(self, torch, encoder, history, device, naive_batch):
        from hstu.actions import UNKNOWN

        self.torch, self.enc, self.device, self.UNKNOWN = torch, encoder, device, UNKNOWN
        g = torch.Generator().manual_seed(1234)
        h = history
        num_items = encoder.embedding.num_items
        self.h = h
        self.items = torch.randint(1, num_items + 1, (h,), generator=g).to(device)
        self.actions = torch.randint(2, 5, (h,), generator=g).to(device)  # negative / neutral / positive
        # seconds, increasing, gaps of minutes to days: every time bucket occurs
        self.ts = (978_300_000 + torch.randint(60, 400_000, (h,), generator=g).cumsum(0)).to(device)
        self.now = self.ts[-1:]  # the request time: the default candidate timestamp of score_candidates
        self.hist_offsets = torch.tensor([0, h], device=device)
        # naive: a [B, h + 1] batch of history + one candidate slot, reused for every batch
        n, B = h + 1, naive_batch
        self.B = B
        one = torch.ones(1, dtype=torch.int64, device=device)
        self.nb_items = torch.cat([self.items, one]).repeat(B).view(B, n)
        self.nb_actions = torch.cat([self.actions, self.UNKNOWN * one]).repeat(B)
        self.nb_ts = torch.cat([self.ts, self.now]).repeat(B)
        self.nb_offsets = torch.arange(B + 1, device=device) * n
        self.nb_targets = torch.ones(B, dtype=torch.int64, device=device)

    def naive(self, cands):
        n, outs = self.h + 1, []
        for s in range(0, cands.shape[0], self.B):
            c = cands[s:s + self.B]
            b = c.shape[0]
            items = self.nb_items[:b].clone()
            items[:, -1] = c
            out = self.enc(items.view(-1), self.nb_actions[:b * n], self.nb_offsets[:b + 1], self.nb_ts[:b * n],
                           self.nb_targets[:b], check=False)
            outs.append(out.view(b, n, -1)[:, -1])
        return self.torch.cat(outs)

    def one_pass(self, cands):
        torch, m = self.torch, cands.shape[0]
        items = torch.cat([self.items, cands])
        actions = torch.cat([self.actions, torch.full_like(cands, self.UNKNOWN)])
        ts = torch.cat([self.ts, self.now.expand(m)])
        offsets = torch.tensor([0, self.h + m], device=self.device)
        nt = torch.tensor([m], device=self.device)
        return self.enc(items, actions, offsets, ts, nt, check=False)[self.h:]

    def prefill(self):
        return self.enc.prefill(self.items, self.actions, self.hist_offsets, self.ts)

    def score(self, cache, cands, bm):
        offsets = self.torch.tensor([0, cands.shape[0]], device=self.device)
        return self.enc.score_candidates(cache, cands, offsets, microbatch_size=bm)

