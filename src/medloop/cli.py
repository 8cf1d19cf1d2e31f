"""The `medloop` command line: parses arguments, loads configs, calls the library. No logic here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from medloop.errors import MedloopError

app = typer.Typer(
    name="medloop",
    help="Active learning for medical images: pick and synthesize the images that teach a model most.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: built-in phantoms and readers for real layouts.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_time=False, show_path=False, markup=False)],
        force=True,
    )


def _version_callback(value: bool) -> None:
    if value:
        from medloop import __version__

        console.print(f"medloop {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    _setup_logging(verbose)


@data_app.command("list")
def data_list() -> None:
    """List built-in datasets and supported folder layouts (with their options)."""
    from medloop.report.console import layout_tables

    for table in layout_tables():
        console.print(table)


@data_app.command("inspect")
def data_inspect(
    source: Annotated[str, typer.Argument(help="builtin:NAME or a dataset folder.")],
    layout: Annotated[Optional[str], typer.Option(help="Layout name (auto-detected when omitted).")] = None,
    preview: Annotated[Optional[Path], typer.Option(help="Write a preview montage with mask overlays (PNG).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Working size in pixels (native when omitted).")] = None,
    seed: Annotated[int, typer.Option(help="Seed (built-in phantoms).")] = 0,
    on_error: Annotated[str, typer.Option(help="raise: stop at the first bad file; skip: skip it with a warning.")] = "raise",
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Layout option key=value (repeatable).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Counts per class and label value, sizes, intensities, mask coverage, cases without masks."""
    from medloop.config import DataConfig, parse_overrides
    from medloop.data import load_dataset, save_preview, summarize
    from medloop.report.console import summary_table
    from medloop.storage import write_json

    config = DataConfig.from_dict(
        {"source": source, "layout": layout, "size": size, "seed": seed, "on_error": on_error, "options": parse_overrides(option)}
    )
    ds = load_dataset(config)
    summary = summarize(ds)
    console.print(summary_table(summary))
    if summary.ignored_files:
        from rich.markup import escape

        more = len(ds.ignored) - len(summary.ignored_files)
        console.print(escape(f"not recognised as data, ignored: {', '.join(summary.ignored_files)}"
                             + (f" and {more} more" if more > 0 else "")))
    if json_out is not None:
        write_json(json_out, summary.to_dict(), indent=2)
        console.print(f"summary written to {json_out}")
    if preview is not None:
        console.print(f"preview written to {save_preview(ds, preview, seed=seed)}")


@app.command()
def train(
    task: Annotated[str, typer.Option(help="classify or segment.")] = "classify",
    data: Annotated[str, typer.Option(help="builtin:NAME or a dataset folder.")] = "builtin:chest-xray",
    model: Annotated[str, typer.Option(help="resnet18 | vgg16 (classify) or unet (segment).")] = "resnet18",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/train"),
    config: Annotated[Optional[Path], typer.Option(help="TrainConfig YAML; flags below override it.")] = None,
    size: Annotated[int, typer.Option(help="Working size in pixels.")] = 128,
    layout: Annotated[Optional[str], typer.Option(help="Layout name (auto-detected when omitted).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Layout option key=value.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Classifier width (64 = standard; smaller for CPU).")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="MC dropout rate.")] = None,
    fine_tune: Annotated[Optional[str], typer.Option(help="all, or head (last layer only).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Learning rate: constant, or cosine (decayed to 0 over the epochs).")] = None,
    pretrained: Annotated[Optional[Path], typer.Option(help="Local torchvision ImageNet checkpoint (.pth).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for split, initialization, augmentation, dropout.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Train a Bayesian classifier or UNet; writes checkpoint, metrics JSON and a short report."""
    from medloop.config import DataConfig, TrainConfig, parse_overrides
    from medloop.jobs import train_job

    base = TrainConfig.from_yaml(config).to_dict() if config else {}
    params = dict(base.get("model_params", {}))
    params.update({k: v for k, v in (("width", width), ("dropout", dropout)) if v is not None})
    if model == "unet":
        params.pop("width", None)
    overrides = {"task": task, "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "fine_tune": fine_tune, "schedule": schedule, "pretrained": str(pretrained) if pretrained else None, "seed": seed,
                 "device": device, "model_params": params}
    cfg = TrainConfig.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None}})
    data_cfg = DataConfig.from_dict({"source": data, "layout": layout, "size": size, "seed": seed,
                                     "options": parse_overrides(option)})
    metrics = train_job(data_cfg, cfg, out)
    console.print(f"test: {json.dumps(metrics['test'])}")
    console.print(f"written to {out}/: checkpoint.pt, metrics.json, report.md, history.png, run.json")


@app.command()
def pretrain(
    data: Annotated[str, typer.Option(help="builtin:NAME or a dataset folder (its images; labels only for the probe).")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/pretrain"),
    model: Annotated[str, typer.Option(help="resnet18 or vgg16 (the classifier whose trunk is pretrained).")] = "resnet18",
    width: Annotated[int, typer.Option(help="Classifier width (must match the experiment's model_params.width).")] = 16,
    size: Annotated[int, typer.Option(help="Working size in pixels.")] = 128,
    layout: Annotated[Optional[str], typer.Option(help="Layout name (auto-detected when omitted).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Layout option key=value.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="SelfSupConfig YAML; flags below override it.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the unlabeled images.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (two views each).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (cosine schedule).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="NT-Xent temperature.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for split, initialization, views and batches.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Self-supervised (SimCLR) pretraining of a classifier trunk on a dataset's training images; prints a
    linear-probe AUC (pretrained vs random init) and writes selfsup.pt for classifier.pretrained."""
    from medloop.config import DataConfig, parse_overrides, read_yaml
    from medloop.jobs import pretrain_job
    from medloop.training.selfsup import SelfSupConfig

    base = read_yaml(config) if config else {}
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "temperature": temperature}
    cfg = SelfSupConfig.from_dict({**base, **{k: v for k, v in flags.items() if v is not None}, "seed": seed,
                                   "device": device}, where=str(config) if config else "")
    data_cfg = DataConfig.from_dict({"source": data, "layout": layout, "size": size, "seed": seed,
                                     "options": parse_overrides(option)})
    metrics = pretrain_job(data_cfg, model, {"width": width}, cfg, out)
    probe = metrics["linear_probe"]
    if probe["pretrained"] is not None:
        console.print(f"linear probe (test ROC AUC): pretrained {probe['pretrained']['auc']:.3f}, "
                      f"random init {probe['random_init']['auc']:.3f}")
    else:
        console.print("linear probe skipped: the data has no image labels of two classes")
    console.print(f"{metrics['n_images']} images, {metrics['seconds']:.0f} s; written to {out}/: selfsup.pt, "
                  "metrics.json, loss.png, config.yaml, run.json")
    console.print(f"use it: classifier.pretrained: {out / 'selfsup.pt'} (or classifier.pretrained: selfsup in an "
                  "experiment, which pretrains on each seed's pool)")


@app.command()
def score(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint.pt written by medloop train.")],
    data: Annotated[str, typer.Option(help="The pool: builtin:NAME or a dataset folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/score"),
    mc_samples: Annotated[int, typer.Option(help="MC dropout samples T.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch (memory does not grow with the pool).")] = 32,
    layout: Annotated[Optional[str], typer.Option(help="Layout name (auto-detected when omitted).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Layout option key=value.")] = None,
    max_maps: Annotated[int, typer.Option(help="Uncertainty-map PNGs for the most uncertain images (segmentation).")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the MC dropout masks.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    engine: Annotated[str, typer.Option(help="local: this process (CSV). ray: a Ray cluster, streaming to Parquet "
                                             "with a global top-k and resuming by model version "
                                             "(pip install medloop[ray]).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (--engine ray; default: a local "
                                                        "Ray on this machine).")] = None,
    top_k: Annotated[int, typer.Option(help="Most uncertain images listed in topk.csv (--engine ray).")] = 100,
) -> None:
    """Per-image uncertainties (all measures) as CSV; uncertainty maps for segmentation."""
    from medloop.config import DataConfig, parse_overrides
    from medloop.jobs import score_job

    data_cfg = DataConfig.from_dict({"source": data, "layout": layout, "seed": seed, "options": parse_overrides(option)})
    path = score_job(checkpoint, data_cfg, out, n_mc_samples=mc_samples, batch_size=batch_size, seed=seed,
                     max_maps=max_maps, device=device, engine=engine, address=address, top_k=top_k)
    if engine == "ray":
        console.print(f"scores written to {out / 'scores'} (Parquet); top {top_k} in {path}; summary in "
                      f"{out / 'summary.json'}")
        return
    console.print(f"scores written to {path}" + (f"; maps in {out / 'maps'}" if (out / "maps").is_dir() else ""))


@app.command()
def generate(
    data: Annotated[str, typer.Option(help="builtin:NAME or a chest X-ray dataset folder.")] = "builtin:chest-xray",
    per_image: Annotated[int, typer.Option(help="Variants per image (the paper: up to 200).")] = 200,
    out: Annotated[Path, typer.Option(help="Output folder (becomes a medloop folder dataset).")] = Path("runs/generate"),
    checkpoint: Annotated[Optional[Path], typer.Option(help="generator.pt from an earlier run (skips training).")] = None,
    segmenter: Annotated[Optional[Path], typer.Option(help="UNet checkpoint for images without a manual mask.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="CGANConfig YAML (losses, widths, epochs, perturbations).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="CGANConfig override key=value (repeatable).")] = None,
    size: Annotated[int, typer.Option(help="Working size in pixels (divisible by 16).")] = 128,
    limit: Annotated[Optional[int], typer.Option(help="Variants only for the first N images.")] = None,
    seg_epochs: Annotated[int, typer.Option(help="Epochs of the UNet trained for images without a mask.")] = 15,
    layout: Annotated[Optional[str], typer.Option(help="Layout name (auto-detected when omitted).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Layout option key=value.")] = None,
    batch_size: Annotated[int, typer.Option(help="Variants rendered per batch.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of training and of the perturbations.")] = 0,
    engine: Annotated[str, typer.Option(help="local: render in this process. ray: render on a Ray cluster's actors "
                                             "(the output folder must be shared; pip install medloop[ray]).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (--engine ray; default: a local "
                                                        "Ray on this machine).")] = None,
) -> None:
    """Synthesize realistic variants of each image by deforming its lung mask (Mahapatra et al. 2018)."""
    from medloop.config import DataConfig, parse_overrides
    from medloop.generate import generate_job
    from medloop.training.cgan import CGANConfig

    base = CGANConfig.from_yaml(config).to_dict() if config else {}
    cgan = CGANConfig.from_dict({**base, "seed": seed, **parse_overrides(set_)})
    data_cfg = DataConfig.from_dict({"source": data, "layout": layout, "size": size, "seed": seed,
                                     "options": parse_overrides(option)})
    summary = generate_job(data_cfg, out, per_image=per_image, cgan=cgan, checkpoint=checkpoint, segmenter=segmenter,
                           seg_epochs=seg_epochs, limit=limit, batch_size=batch_size, seed=seed, engine=engine,
                           address=address)
    console.print(f"{summary['variants']} variants of {summary['sources']} images in {summary['seconds']} s "
                  f"({summary['images_per_s']} images/s); generator {summary['generator']}")
    console.print(f"written to {out}/: images/, masks/, labels.csv, manifest.jsonl, gallery.png, generator.pt, run.json")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML, e.g. experiments/mahapatra2018.yaml.")],
    data: Annotated[Optional[str], typer.Option(help="Override data.source (builtin:NAME or a folder).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (rerun with the same folder to resume).")] = None,
    seeds: Annotated[Optional[int], typer.Option(help="Run seeds 0..N-1 (overrides the config's seeds).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after a kill.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override key=value; dotted keys for sections "
                                                                    "(classifier.model=vgg16).")] = None,
) -> None:
    """Run (or resume) an active-learning experiment; writes results.json and the report."""
    from medloop import methods
    from medloop.config import parse_overrides

    overrides = parse_overrides(set_)
    if data is not None:
        overrides["data.source"] = data
    if seeds is not None:
        overrides["seeds"] = list(range(seeds))
    cfg = methods.load_config(config, overrides)
    out = out or Path("runs") / cfg.name
    method = methods.get(cfg.method)
    results = method.run(cfg, out, resume=resume, console=console)
    console.print(method.summary(results))
    console.print(f"report: {out / 'report.md'} (and report.html); results: {out / 'results.json'}")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="Experiment YAML of either method.")],
    out: Annotated[Path, typer.Option(help="Run folder (its datastore/ holds images, labels and the index).")],
    data: Annotated[Optional[str], typer.Option(help="Override data.source (builtin:NAME or a folder).")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = 8000,
    token: Annotated[Optional[str], typer.Option(help="Access token (a random one is printed when omitted).")] = None,
    lease: Annotated[float, typer.Option(help="Seconds an image stays with the annotator who opened it.")] = 300.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the served run in --out after a stop or kill.")] = False,
    reads_per_image: Annotated[Optional[int], typer.Option(
        help="Different annotators who label each image (>= 1); the model trains on their consensus. "
             "Default 1, or what the resumed run was started with.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override key=value (dotted keys for sections).")] = None,
) -> None:
    """Label with the loop: an annotation server and browser UI; the model retrains after each batch."""
    from medloop import methods
    from medloop.config import parse_overrides
    from medloop.serve import serve as serve_run

    overrides = parse_overrides(set_)
    if data is not None:
        overrides["data.source"] = data
    cfg = methods.load_config(config, overrides)

    def echo(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
        sys.stdout.flush()

    serve_run(cfg, out, host=host, port=port, token=token, resume=resume, lease_seconds=lease, echo=echo,
              reads_per_image=reads_per_image)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="The --out folder of a `medloop run`.")],
) -> None:
    """Rebuild report.md / report.html and the figures from results.json."""
    from medloop import methods
    from medloop.report.html import read_results

    path = methods.get(read_results(run_dir).get("method", methods.DEFAULT)).build_report(run_dir)
    console.print(f"report written to {path} (and report.html)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("medloop-demo"),
    seed: Annotated[int, typer.Option(help="Seed for everything in the demo.")] = 0,
    size: Annotated[int, typer.Option(help="Working size of the phantoms (the AL experiment uses at most 64).")] = 64,
    quick: Annotated[bool, typer.Option("--quick", help="A one-minute smoke test of the same steps (tiny sizes).")] = False,
) -> None:
    """Run medloop's main job on the built-in phantoms (offline, CPU, ~10 minutes)."""
    from medloop.demo import run_demo

    run_demo(out, seed=seed, size=size, console=console, quick=quick)


def main() -> None:
    """Entry point: user errors print one clear line and exit with status 2 (no traceback)."""
    try:
        app()
    except MedloopError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
