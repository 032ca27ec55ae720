"""`kdchain export [CHAIN_RUN] --out DIR`: a finished chain's family as one folder (kdchain.bundle), read from MLflow.

Trains nothing and starts no Prefect server; a generation the chain did not quantize is quantized here.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from flows.command_helpers import EXIT_USAGE


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("chain_run", metavar="CHAIN_RUN", nargs="?", default="latest",
                   help="the chain run's id, as `kdchain run` and `kdchain compare --all` print it (default: the "
                        "store's latest finished chain run)")
    p.add_argument("--out", type=Path, required=True, help="folder to create: the ONNX files and manifest.json")
    p.add_argument("--tracking-uri")


def cmd_export(args) -> int:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per generation instead
    import yaml

    from kdchain.bundle import write_bundle
    from kdchain.spec import spec_from_dict
    from kdchain.tracking import resolve_uri
    from kdchain.tracking.bundle import BundleSourceError, chain_sources

    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"kdchain export: --out {out} exists and is not an empty folder; give a new folder", file=sys.stderr)
        return EXIT_USAGE
    uri = resolve_uri(args.tracking_uri)
    if args.chain_run == "latest":
        from kdchain.tracking.store import latest_chain_run

        latest = latest_chain_run(uri, status="FINISHED")
        if latest is None:
            print(f"kdchain export: no finished chain run in {uri}; run a chain first or pass --tracking-uri",
                  file=sys.stderr)
            return EXIT_USAGE
        args.chain_run = latest.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            spec_yaml, rows = chain_sources(uri, args.chain_run, Path(tmp))
        except BundleSourceError as e:
            print(f"kdchain export: {e}", file=sys.stderr)
            return EXIT_USAGE
        raw = yaml.safe_load(spec_yaml)
        if raw["teacher"].get("from"):  # the run's spec.yaml holds every default, `train` too, which `from` refuses
            raw["teacher"].pop("train", None)
        spec = spec_from_dict(raw, f"chain run {args.chain_run}'s spec.yaml")
        manifest = write_bundle(spec, args.chain_run, rows, out)
    for g in manifest["generations"]:
        f, q = g["fp32"], g["int8"]
        print(f"{g['name']:>8}  fp32 {f['file']} {f['size_bytes']:,} B {f['test_accuracy']:.2%}   "
              f"int8 {q['file']} {q['size_bytes']:,} B {q['test_accuracy']:.2%}")
    print(f"wrote {len(manifest['generations'])} generations and manifest.json to {out}")
    return 0
