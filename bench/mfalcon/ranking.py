"""The M-FALCON benchmark's whole-catalogue ranking: every item of a MovieLens catalogue scored for every user
through ``prefill`` + ``score_candidates``, its timing, and its printed summary."""

import sys
import time
from pathlib import Path

from bench.common import ROOT, median
from bench.mfalcon.methods import make_model

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data" / "ml-1m-half"
FULL_ML1M_USERS = 6040


def rank_catalogue(torch, args, ctx, timer, device, fused, max_seq_len, seed):
    """Rank every item of the data's catalogue for its users through prefill + score_candidates."""
    data_dir = args.data_dir
    if data_dir is None:
        if not DEFAULT_DATA_DIR.is_dir():
            print(f"whole-catalogue ranking skipped: {DEFAULT_DATA_DIR} does not exist (pass --data-dir)")
            return None
        data_dir = str(DEFAULT_DATA_DIR)
    if not Path(data_dir).is_dir():
        print(f"whole-catalogue ranking skipped: --data-dir {data_dir} does not exist")
        return None
    import numpy as np
    from tqdm import tqdm

    from hstu.train import load_sequences

    t0 = time.perf_counter()
    _, seqs = load_sequences(data_dir, "ml-1m")
    load_s = time.perf_counter() - t0
    U_all, n_items = len(seqs), seqs.num_items
    users = np.arange(U_all)
    if args.max_users is not None and args.max_users < U_all:
        users = np.unique(np.linspace(0, U_all - 1, args.max_users).round().astype(np.int64))
    U = len(users)
    model, cfg = make_model(torch, n_items, args, max_seq_len, fused, device, seed)
    hmax = max_seq_len - 1
    # each user's last <= hmax events (the serving window), as host batches (pinned on a GPU)
    hi = seqs.offsets[users + 1]
    lo = np.maximum(seqs.offsets[users], hi - hmax)
    lengths = hi - lo
    actions_all = seqs.actions()
    pin = device.type == "cuda"
    batches = []
    for s in range(0, U, args.user_batch):
        sl = slice(s, s + args.user_batch)
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo[sl], hi[sl])])
        offs = np.concatenate([[0], np.cumsum(lengths[sl])])
        host = [torch.from_numpy(x) for x in (seqs.items[idx], actions_all[idx], seqs.timestamps[idx], offs,
                                             lengths[sl].astype(np.int64))]
        batches.append([x.pin_memory() if pin else x for x in host])
    B = args.user_batch
    all_items = torch.arange(1, n_items + 1, device=device).repeat(B)
    cand_offsets = torch.arange(B + 1, device=device) * n_items
    bm, k = args.rank_microbatch, min(args.topk, n_items)

    def run(batch):
        items, actions, ts, offs, lens = (x.to(device, non_blocking=True) for x in batch)
        b = lens.shape[0]
        cache = model.prefill(items, actions, offs, ts)
        scores = model.score_candidates(cache, all_items[:b * n_items], cand_offsets[:b + 1], microbatch_size=bm)
        r = scores.ratings.float().view(b, n_items)
        seg = torch.repeat_interleave(torch.arange(b, device=device), lens, output_size=items.shape[0])
        r[seg, items - 1] = float("-inf")  # the items of the cached window: already seen
        return r.topk(k, dim=1).indices.add_(1).cpu()

    with ctx():
        run(batches[0])  # warm-up: compilation, autotuning, allocator
        if len(batches) > 1 and batches[-1][4].shape[0] != batches[0][4].shape[0]:
            run(batches[-1])
        timer.sync()
        per_batch = []
        top = []
        t_start = time.perf_counter()
        for batch in tqdm(batches, desc="ranking users", unit="batch", disable=args.no_progress, file=sys.stderr):
            t = time.perf_counter()
            top.append(run(batch))
            per_batch.append(time.perf_counter() - t)
        timer.sync()
        total = time.perf_counter() - t_start
    top = torch.cat(top)
    assert top.shape == (U, k) and int(top.min()) >= 1 and int(top.max()) <= n_items
    per_user = total / U
    return dict(
        data_dir=str(Path(data_dir).resolve()), data_users=U_all, users=U, subset=U < U_all, items=n_items,
        model_num_items=cfg.num_items, mean_history=float(lengths.mean()), max_history=int(lengths.max()),
        user_batch=args.user_batch, microbatch=bm, topk=k, load_s=load_s, total_s=total, per_user_ms=1e3 * per_user,
        per_batch_median_s=median(per_batch), items_per_s=U * n_items / total,
        extrapolated_data_users_s=per_user * U_all, extrapolated_6040_s=per_user * FULL_ML1M_USERS,
    )


def print_ranking(r):
    sub = f" (an evenly spaced subset of {r['data_users']})" if r["subset"] else ""
    print(f"\nwhole-catalogue ranking: {r['users']} users{sub} x {r['items']} items, histories <= {r['max_history']} "
          f"(mean {r['mean_history']:.1f}), user batch {r['user_batch']}, b_m {r['microbatch']}: "
          f"{r['total_s']:.2f} s = {r['per_user_ms']:.2f} ms per user ({r['items_per_s']:.0f} items/s); "
          f"all {r['data_users']} users: {r['extrapolated_data_users_s']:.1f} s; "
          f"{FULL_ML1M_USERS} users: {r['extrapolated_6040_s']:.1f} s")

