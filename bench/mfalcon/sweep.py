"""The M-FALCON benchmark's passes over the scoring methods: the check that they agree on the candidate
outputs, and the timed sweep over the candidate counts m and the microbatch sizes b_m."""

from bench.common import median
from bench.mfalcon.flops import method_bound
from bench.mfalcon.methods import backends_ran
from bench.mfalcon.report import print_table

# agreement of the methods' candidate outputs, relative to max(1, max |one-pass output|)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


def check_agreement(torch, meth, cands, bms, dtype, ctx):
    """Compare naive and every M-FALCON b_m with the one-pass forward on ``cands``; record which attention backends
    each method ran. Returns (check, backends_ran); raises AssertionError if they disagree."""
    m_check = cands.shape[0]
    with torch.no_grad(), ctx():
        ref = meth.one_pass(cands).float()
        outs = {"naive": meth.naive(cands).float()}
        cache = meth.prefill()
        for bm in bms:
            outs[f"mfalcon bm={bm}"] = meth.score(cache, cands, bm).float()
        scale = max(1.0, ref.abs().max().item())
        errors = {name: (o - ref).abs().max().item() for name, o in outs.items()}
        tol = TOLERANCE[dtype] * scale
        probe = {
            "naive": backends_ran(lambda: meth.naive(cands[:2])),
            "one-pass": backends_ran(lambda: meth.one_pass(cands[:2])),
            "mfalcon prefill": backends_ran(meth.prefill),
            "mfalcon scoring": backends_ran(lambda: meth.score(cache, cands[:2], bms[0])),
        }
    check = dict(m=m_check, reference="one-pass", max_abs_err=errors, tolerance=tol, ok=max(errors.values()) <= tol)
    print(f"check at m={m_check}: max |output - one-pass| " + ", ".join(f"{n} {e:.2e}" for n, e in errors.items())
          + f" (tolerance {tol:.1e})")
    print("backends that ran: " + "; ".join(
        f"{k}: " + ", ".join(f"{op} {'+'.join(b)}" for op, b in v.items()) for k, v in probe.items()))
    assert check["ok"], f"the methods disagree on the candidate outputs at m={m_check}: {errors} > {tol}"
    return check, probe


def time_methods(torch, meth, perm, ms, bms, args, timer, ctx, history):
    """One row per method (and b_m) and m: the times of ``args.repeats`` runs after ``args.warmup``, the speedup
    over naive and its FLOP-ratio bound, the CUDA peak memory; the table of each m is printed when it is done."""
    rows = []
    R, W = args.repeats, args.warmup

    def add(method, m, times, bm=None, extra=None, peak=None):
        med = median(times)
        row = dict(method=method, bm=bm, m=m, median_s=med, min_s=min(times), times_s=times,
                   cands_per_s=m / med, bound=method_bound(method, m, history, args.dim, args.layers),
                   peak_mib=peak, naive_extrapolated=False)
        row.update(extra or {})
        rows.append(row)
        return row

    with torch.no_grad(), ctx():
        for m in ms:
            cands = perm[:m]
            # naive: estimate the cost from one batch; time a subset of whole batches if m would take too long
            b1 = cands[:min(m, args.naive_batch)]
            t1 = median(timer(lambda b1=b1: meth.naive(b1), 1, W)) / b1.shape[0]
            est = t1 * m * (R + W)
            m_naive = m
            if est > args.max_naive_seconds and m > args.naive_batch:
                nbatch = max(1, int(args.max_naive_seconds / (t1 * args.naive_batch * (R + W))))
                m_naive = min(m, nbatch * args.naive_batch)
            sub = cands[:m_naive]
            base = timer.peak_reset()
            times = timer(lambda sub=sub: meth.naive(sub), R, W if m_naive == m else 0)
            scale_f = m / m_naive
            add("naive", m, [t * scale_f for t in times], peak=timer.peak_mib(base),
                extra=dict(naive_extrapolated=m_naive < m, naive_measured_candidates=m_naive))
            base = timer.peak_reset()
            add("one-pass", m, timer(lambda c=cands: meth.one_pass(c), R, W), peak=timer.peak_mib(base))
            pre = timer(meth.prefill, R, W)
            cache = meth.prefill()
            for bm in bms:
                base = timer.peak_reset()
                add("mfalcon-scoring", m, timer(lambda k=cache, c=cands, b=bm: meth.score(k, c, b), R, W), bm=bm,
                    peak=timer.peak_mib(base), extra=dict(prefill_median_s=median(pre)))
                add("mfalcon-prefill+scoring", m, timer(lambda c=cands, b=bm: meth.score(meth.prefill(), c, b), R, W),
                    bm=bm)
            naive_s = next(r["median_s"] for r in rows if r["method"] == "naive" and r["m"] == m)
            for r in rows:
                if r["m"] == m:
                    r["speedup_vs_naive"] = naive_s / r["median_s"]
                    r["speedup_over_bound"] = r["speedup_vs_naive"] / r["bound"]
            print_table([r for r in rows if r["m"] == m], m)
            cache = None  # free it before the next m
    return rows
