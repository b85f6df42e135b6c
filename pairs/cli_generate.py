"""``toon-pairs generate``, ``verify``, ``preview`` and ``stats``: the paired dataset commands.

:func:`add_generate_commands` registers them on the ``toon-pairs`` subparsers; each command
returns an exit code and raises :class:`pairs.shards.PairsError` (one-line message) on errors.
Importing this module does not import torch (``generate`` imports it when it runs).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

PROG = "toon-pairs"


def parse_index_list(text: str) -> tuple[int, ...]:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)`` (ranges inclusive)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise argparse.ArgumentTypeError(f"bad shard list item {part!r}: use e.g. 3 or 0-9,12")
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2) or lo) + 1))
    return tuple(out)


def parse_task(text: str) -> tuple[int, int]:
    """``"I/T"`` -> ``(I, T)``."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise argparse.ArgumentTypeError(f"bad task {text!r}: use I/T with 0 <= I < T, e.g. 3/8")
    return int(m.group(1)), int(m.group(2))


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {v}")
    return v


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_generate(args: argparse.Namespace) -> int:
    """Run or resume a pair generation job."""
    from pairs.generate import generate
    from pairs.job import GenerateConfig, describe, prepare_job

    cfg = GenerateConfig(
        out=args.out,
        toon=args.toon,
        base=args.base,
        count=args.count,
        seed=args.seed,
        truncation_psi=args.truncation_psi,
        truncation_cutoff=args.truncation_cutoff,
        noise=args.noise,
        size=args.size,
        shard_size=args.shard_size,
        num_shards=args.num_shards,
        batch=args.batch,
        precision=args.precision,
        mix_prob=args.mix_prob,
        perturb_std=args.perturb_std,
        png_level=args.png_level,
        latents=args.latents,
        photos=args.photos,
        encoder=args.encoder,
        target=args.target,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        shard_index=args.shard_index,
        task=args.task,
        use_slurm=not args.no_slurm,
    )
    job = prepare_job(cfg)
    if args.dry_run:
        print(json.dumps(describe(job), indent=2))
        return 0
    try:
        generate(job, progress=not args.quiet, log=None if args.quiet else _stderr)
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; finished shards are kept in {args.out}, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Copy the pairs of several finished datasets into one new dataset."""
    from pairs.merge import merge_datasets

    man = merge_datasets(
        args.dirs, args.out, args.shard_size, log=lambda msg: print(msg, file=sys.stderr)
    )
    parts = ", ".join(f"{s['folder']} {s['count']}" for s in man["config"]["sources"])
    print(f"{args.out}: {man['count']} pairs in {man['num_shards']} shards ({parts})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every shard (read-only unless --update-manifest); exit status 1 when any is
    missing or corrupt, or manifest.json does not list the finished shards."""
    from pairs.verify import verify

    rep = verify(args.dir, deep=args.deep, update_manifest=args.update_manifest)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=2))
        return 0 if rep.ok else 1
    bad = rep.problems()
    for s in bad:
        print(f"{s['name']}: {s['status']}: {s['detail']}")
    if rep.stray_temps:
        print(f"{len(rep.stray_temps)} temporary files of interrupted runs (a rerun removes them)")
    if rep.manifest_updated:
        print("manifest.json brought up to date with the finished shards")
    if rep.manifest_stale:
        print(
            "manifest.json does not list the finished shards (a process was killed before "
            f"updating it): run {PROG} verify --update-manifest {args.dir}, or rerun generate"
        )
    ok = rep.num_shards - len(bad)
    print(
        f"{args.dir}: {'OK' if rep.ok else 'NOT OK'}: {ok}/{rep.num_shards} shards intact, "
        f"{rep.ok_pairs}/{rep.count} pairs"
        + ("; rerun the same generate command to write the missing ones" if bad else "")
        + ("; manifest.json out of date" if rep.manifest_stale and not bad else "")
    )
    return 0 if rep.ok else 1


def cmd_preview(args: argparse.Namespace) -> int:
    """Write a grid of src|dst pairs."""
    from common.images import save_png
    from pairs.overview import preview_grid

    grid = preview_grid(args.dir, n=args.n, start=args.start, cols=args.cols)
    save_png(grid, args.out)
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print counts, sizes, the config and pixel statistics."""
    from pairs.overview import dataset_stats

    st = dataset_stats(args.dir, sample=args.sample)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    cfg, sm = st["config"], st["sample"]
    mb = st["bytes"] / 1e6
    print(
        f"{st['path']}: {st['finished_pairs']}/{st['count']} pairs, "
        f"{st['finished_shards']}/{st['num_shards']} shards"
        + (" (complete)" if st["complete"] else " (incomplete)")
    )
    print(f"resolution: {st['resolution']}x{st['resolution']}")
    if st["finished_pairs"]:
        print(
            f"on disk: {mb:.1f} MB, {st['bytes_per_pair'] / 1e3:.1f} kB per pair "
            f"(src {st['src_png_bytes_mean'] / 1e3:.1f} kB, "
            f"dst {st['dst_png_bytes_mean'] / 1e3:.1f} kB)"
        )
    if cfg.get("kind") == "merged":
        parts = ", ".join(f"{s['folder']} ({s['count']} pairs)" for s in cfg["sources"])
        print(f"merged from: {parts}")
    else:
        line = f"latents: {cfg['latent_kind']}, seed {cfg['seed']}, noise {cfg['noise_mode']}"
        if cfg["latent_kind"] == "z":
            line += f", truncation {cfg['truncation_psi']}"
            if cfg["mix_prob"] or cfg["perturb_std"]:
                line += f", mix {cfg['mix_prob']}, perturb {cfg['perturb_std']}"
        if cfg.get("target", "render") != "render":
            line += f", {cfg['target']} targets"
        print(line + f"; batch {cfg['batch']}, {cfg['precision']}")
        for role in ("base", "toon"):
            t = st["teachers"].get(role)
            if t:
                print(f"{role}: {t['file']} (sha256 {t['sha256'][:12]})")
    if cfg.get("latents"):
        print(f"projected latents: {cfg['latents']['file']}, photos: {cfg['photos']['folder']}")
    if cfg.get("encoder"):
        print(f"encoder: {cfg['encoder']['file']}, photos: {cfg['photos']['folder']}")
    if sm["pairs"]:
        print(
            f"first {sm['pairs']} pairs: src mean RGB {sm['src_mean_rgb']}, "
            f"dst mean RGB {sm['dst_mean_rgb']}, mean |dst - src| {sm['mean_abs_dst_minus_src']}"
            + (f", style-mixed {sm['style_mixed']}" if cfg.get("mix_prob") else "")
        )
    return 0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Parsers


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="render (input, target) pairs into tar shards; deterministic and resumable",
        description=(
            "Render pairs with the base (input src.png) and the blended teacher (target dst.png) "
            "into OUT/shard-NNNNNN.tar (webdataset) with manifest.json. Pair k depends only on "
            "the settings and k, so any split of the shards across processes (--shard-index, "
            "--task, a Slurm array) gives the same bytes, and rerunning the same command skips "
            "finished shards. With --latents and --photos the inputs are real aligned photos "
            "and the targets the blended renders of their projected latents; with --encoder "
            "and --photos the codes come from an inversion encoder (toon-teacher encoder "
            "train) in the same pass."
        ),
    )
    p.add_argument("--toon", required=True, metavar="FILE", help="blended teacher (targets)")
    p.add_argument("--base", metavar="FILE", help="base generator (inputs; z pairs need it)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--count", type=_positive, help="number of pairs (projected: default all)")
    p.add_argument("--seed", type=_non_negative, default=0, help="pair k uses seed+k (default 0)")
    p.add_argument(
        "--trunc",
        dest="truncation_psi",
        metavar="TRUNC",
        type=float,
        help="truncation psi of z pairs (default 0.7)",
    )
    p.add_argument(
        "--trunc-cutoff",
        dest="truncation_cutoff",
        metavar="TRUNC_CUTOFF",
        type=_positive,
        help="truncate only the first N ws",
    )
    p.add_argument(
        "--noise",
        choices=["const", "random", "none"],
        default="const",
        help="noise inputs (default const; random is drawn per pair from seed+k)",
    )
    p.add_argument("--size", type=_positive, help="output resolution (default the generator's)")
    p.add_argument("--shard-size", type=_positive, help="pairs per shard (default 1000)")
    p.add_argument("--num-shards", type=_positive, help="number of shards (instead of shard size)")
    p.add_argument(
        "--batch",
        type=_positive,
        default=16,
        help="render batch; part of the settings, since it changes the last bits (default 16)",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16"],
        default="auto",
        help="auto: an existing OUT's, else fp16 on CUDA and fp32 on CPU",
    )
    p.add_argument("--mix-prob", type=float, default=0.0, help="style-mixing probability")
    p.add_argument("--perturb-std", type=float, default=0.0, help="std of noise added to ws")
    p.add_argument(
        "--png-level", type=int, default=1, help="PNG compress level 0-9 (default 1: fast)"
    )
    p.add_argument("--latents", metavar="NPZ", help="projected_w.npz: real-photo pairs")
    p.add_argument(
        "--photos", metavar="DIR", help="aligned photos (of the --latents rows, or to --encoder)"
    )
    p.add_argument(
        "--encoder",
        metavar="FILE",
        help="inversion encoder of the base: real-photo pairs from --photos without projection "
        "(a feedback encoder also needs --base, which renders its codes between passes)",
    )
    p.add_argument(
        "--target",
        choices=("render", "delta"),
        default="render",
        help="real-photo pairs' target: render (the blended teacher's render of the photo's "
        "code, default) or delta (the photo plus the teacher's change, toon(w) - base(w): "
        "keeps the photo's identity and detail where the code does not; needs --base)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--workers",
        type=_non_negative,
        help="PNG encoding processes (0: in the main process; default cores - 1, at most 16)",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        help="torch CPU threads (default torch's); CPU bytes depend on it, keep it fixed",
    )
    p.add_argument(
        "--shard-index", type=parse_index_list, metavar="LIST", help="shards to write: 3 or 0-9,12"
    )
    p.add_argument(
        "--task", type=parse_task, metavar="I/T", help="write the shards i with i %% T == I"
    )
    p.add_argument(
        "--no-slurm", action="store_true", help="ignore SLURM_ARRAY_TASK_ID in the environment"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--dry-run", action="store_true", help="print the resolved job and exit")
    p.set_defaults(func=cmd_generate)


def add_generate_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``generate``, ``merge``, ``verify``, ``preview`` and ``stats`` on
    ``toon-pairs``'s subparsers (each sets ``func`` to a command returning an exit code)."""
    _add_generate(sub)

    p = sub.add_parser(
        "merge",
        help="copy several finished pairs datasets into one (e.g. z pairs and real-photo pairs)",
        description=(
            "Copy every pair of the finished datasets DIR... (same resolution) into the new "
            "dataset --out, in the order given, renumbered from 0, images copied byte for byte; "
            "each pair's JSON records its source dataset and key, and the manifest lists the "
            "sources. toon-student train reads one dataset: merge z pairs and real-photo pairs "
            "first. Written under a temporary name and renamed when complete."
        ),
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="finished pairs datasets")
    p.add_argument("--out", required=True, metavar="DIR", help="the new dataset (must not exist)")
    p.add_argument(
        "--shard-size", type=_positive, default=1000, help="pairs per shard (default 1000)"
    )
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "verify",
        help="check a pairs dataset's shards (hashes, counts); exit 1 if any is bad",
        description=(
            "Check each shard's sidecar, size, sha256 and members, and that manifest.json lists "
            "the finished shards; report missing or corrupt shards. Writes nothing, unless "
            "--update-manifest."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--deep", action="store_true", help="also decode every image and JSON")
    p.add_argument(
        "--update-manifest",
        action="store_true",
        help="rewrite manifest.json from the shards' sidecars when it does not list them all",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "preview",
        help="write a grid of pairs (src|dst side by side)",
        description=(
            "Tile the first N finished pairs from --start, each as src|dst (R x 2R), in rows of "
            "--cols (default ceil(sqrt(N))): an image of ceil(N/cols)*R x cols*2R pixels."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--n", type=_positive, default=16, help="number of pairs (default 16)")
    p.add_argument("--start", type=_non_negative, default=0, help="first pair index (default 0)")
    p.add_argument("--cols", type=_positive, help="pairs per row (default ceil(sqrt(n)))")
    p.add_argument("--out", required=True, metavar="FILE.png", help="output image")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser(
        "stats",
        help="counts, sizes, settings and pixel statistics of a pairs dataset",
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument(
        "--sample", type=_non_negative, default=64, help="pairs for pixel stats (default 64)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)


__all__ = ["add_generate_commands", "parse_index_list", "parse_task"]
