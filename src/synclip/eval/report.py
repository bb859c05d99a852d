"""What the `evaluate` stage writes: metrics, per-clip tables, plot data, a contact sheet, samples."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from synclip.artifacts import load_syncnet
from synclip.config import Params
from synclip.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from synclip.data.manifest import read_manifest
from synclip.errors import UserError
from synclip.eval.paper import PAPER_SIZE, load_paper_instruments
from synclip.eval.photo import astronaut, photo_check
from synclip.eval.protocol import (
    VARIANTS,
    EvalResult,
    Scorer,
    evaluate,
    load_eval_clip,
    select_clips,
    summarize,
)
from synclip.files import write_json
from synclip.inference.package import load_pipeline
from synclip.log import progress
from synclip.media.io import VideoWriter
from synclip.pretrained.store import require

log = logging.getLogger(__name__)

LABEL_WIDTH = 120  # px of the contact sheet's left column


def per_clip_table(result: EvalResult) -> pd.DataFrame:
    """One row per (protocol, clip, variant), every score a column."""
    return pd.DataFrame(result.rows)


def dubbing_plot_table(table: pd.DataFrame) -> pd.DataFrame:
    """Wide per-clip dubbing scores for `dvc plots` (x = clip_index): LSE-C and opening r of each variant."""
    dub = table[table["protocol"] == "dubbing"]
    wide = dub.pivot(index="clip", columns="variant", values=["lse_c", "opening_r"])
    wide.columns = [f"{variant}_{metric}" for metric, variant in wide.columns]
    order = list(dict.fromkeys(dub["clip"]))
    wide = wide.loc[order].reset_index()
    wide.insert(0, "clip_index", range(len(wide)))
    return wide


def opening_trace(result: EvalResult, clip: str) -> pd.DataFrame:
    """Per frame of one dubbed clip: the driving audio's true opening and each variant's measured ratio."""
    series = result.traces[clip]
    frame = np.arange(len(series["truth_opening"]))
    return pd.DataFrame({"frame": frame, **{k: np.round(v, 4) for k, v in series.items()}})


def contact_sheet(result: EvalResult, frames_per_clip: int, max_clips: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: per dubbed clip (the first `max_clips`; 0: every clip kept), the lower faces of
    B (the truth), A's input and the model's output.

    Frames are picked at quantiles of B's true opening (shown in time order), so every row spans
    closed to open; the label under each column is that opening.
    """
    blocks = []
    kept = list(result.videos.items())
    for clip, videos in kept[:max_clips] if max_clips else kept:
        opening = result.traces[clip]["truth_opening"]
        picks = np.unique(
            np.argsort(opening)[np.linspace(0, len(opening) - 1, frames_per_clip).round().astype(int)]
        )
        picks.sort()
        rows = []
        for name, label in (("b", "truth (B)"), ("a", "input (A)"), ("model", "synclip")):
            half = videos[name].shape[1] // 2
            tiles = [videos[name][i, half:] for i in picks]
            row = np.concatenate(tiles, axis=1)
            rows.append(_labelled(row, label))
        caption = np.full((18, rows[0].shape[1], 3), 255, np.uint8)
        cv2.putText(caption, clip, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        width = videos["a"].shape[2]
        for k, i in enumerate(picks):
            x = LABEL_WIDTH + k * width + 4
            cv2.putText(
                caption,
                f"o={opening[i]:.2f}",
                (x, 13),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35,
                (60, 60, 60),
                1,
                cv2.LINE_AA,
            )
        blocks.append(np.concatenate([caption, *rows], axis=0))
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 4), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    return np.concatenate(padded, axis=0)


def _note_image(text: str) -> np.ndarray:
    """(40, W, 3) uint8: one line of text on white."""
    image = np.full((40, 8 * len(text) + 16, 3), 255, np.uint8)
    cv2.putText(image, text, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def _labelled(row: np.ndarray, label: str) -> np.ndarray:
    margin = np.full((row.shape[0], LABEL_WIDTH, 3), 255, np.uint8)
    cv2.putText(
        margin, label, (4, row.shape[0] // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([margin, row], axis=1)


def write_sample(result: EvalResult, clip: str, path: Path) -> Path:
    """input (A) | synclip | truth (B) side by side, with B's audio, as an mp4."""
    videos, samples = result.videos[clip], result.audio[clip]
    frames = np.concatenate([videos["a"], videos["model"], videos["b"]], axis=2)
    height, width = frames.shape[1:3]
    with VideoWriter(path, width, height, VIDEO_FPS, audio_rate=AUDIO_SAMPLE_RATE) as writer:
        for index, frame in enumerate(frames):
            writer.write_frame(frame)
            writer.write_audio(samples[None, index * SAMPLES_PER_FRAME : (index + 1) * SAMPLES_PER_FRAME])
    return path


def markdown_table(summary: dict) -> str:
    """The headline numbers as a Markdown table (README, notes)."""
    dub, rec = summary["dubbing"], summary["reconstruction"]
    lines = [
        "| variant | dub offset 0 | dub LSE-C | dub LSE-D | opening r | silent closed | recon mouth SSIM | recon mouth PSNR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        d, r = dub.get(variant, {}), rec.get(variant, {})
        cells = [
            d.get("offset_zero_share"),
            d.get("lse_c"),
            d.get("lse_d"),
            d.get("opening_r"),
            d.get("silent_closed"),
            r.get("ssim_mouth"),
            r.get("psnr_mouth"),
        ]
        lines.append(f"| {variant} | " + " | ".join("–" if c is None else f"{c:g}" for c in cells) + " |")
    return "\n".join(lines)


def paper_markdown(summary: dict) -> str:
    """The papers' instruments: Sync-C / Sync-D per variant, FVD / FID / LPIPS of the model per protocol,
    and each instrument's weights (sha256) or why it is off."""
    paper = summary.get("paper")
    if paper is None:
        return ""
    lines = ["| protocol | variant | Sync-C | Sync-D | FVD | FID | LPIPS |", "|---|---|---|---|---|---|---|"]
    for protocol in ("reconstruction", "dubbing"):
        fidelity = paper.get(protocol, {})
        for variant, scores in summary[protocol].items():
            model = variant == "model"
            cells = [
                scores.get("sync_c"),
                scores.get("sync_d"),
                fidelity.get("fvd") if model else None,
                fidelity.get("fid") if model else None,
                fidelity.get("lpips") if model else None,
            ]
            cells_text = " | ".join("–" if c is None else f"{c:.4g}" for c in cells)
            lines.append(f"| {protocol} | {variant} | {cells_text} |")
    lines += [
        "",
        f"On {paper['frames']}.",
        "",
        "| instrument | weights | sha256 | status |",
        "|---|---|---|---|",
    ]
    for name, item in paper["instruments"].items():
        digest = item["sha256"][:12] + "…" if item["sha256"] else "–"
        lines.append(f"| {name} | {item['weights'] or '–'} | {digest} | {item['status']} |")
    return "\n".join(lines)


def photo_markdown(summary: dict) -> str:
    """The photo check's lines (empty without one)."""
    photo = summary.get("photo")
    if photo is None:
        return ""
    model, still = photo["model"], photo["input"]
    return "\n".join(
        [
            f"Photo check ({photo['photo']}, the speech of {photo['audio_of']}, {photo['frames']} frames; "
            "`photo_sheet.png`):",
            "",
            "| | outside the mask (grey levels) | opening r | silent closed | offset | LSE-C |",
            "|---|---|---|---|---|---|",
            f"| synclip | {photo['outside_mask_change']:.2f} | {_cell(model['opening_r'])} | "
            f"{_cell(model['silent_closed'])} | {model['offset']} | {model['lse_c']:.3f} |",
            f"| the still photo | 0 | {_cell(still['opening_r'])} | {_cell(still['silent_closed'])} | "
            f"{still['offset']} | {still['lse_c']:.3f} |",
        ]
    )


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def headline_markdown(summary: dict) -> str:
    """The model's headline numbers with their 95 % intervals over clips (empty for an older report)."""
    headline = summary.get("headline")
    if not headline:
        return ""
    lines = ["| model | value | 95 % interval | clips | frames |", "|---|---|---|---|---|"]
    for protocol, items in headline.items():
        for name, item in items.items():
            interval = "–" if item["ci_low"] is None else f"[{item['ci_low']:g}, {item['ci_high']:g}]"
            value = "–" if item["value"] is None else f"{item['value']:g}"
            lines.append(f"| {protocol} {name} | {value} | {interval} | {item['clips']} | {item['frames']} |")
    return "\n".join(lines)


def results_markdown(summary: dict) -> str:
    """The README's results: `markdown_table`, each target with its value, interval and whether it is
    met, then the headline numbers' intervals."""
    lines = [
        markdown_table(summary),
        "",
        "| target | value | 95 % interval | bar | met |",
        "|---|---|---|---|---|",
    ]
    for name, target in summary["targets"].items():
        value = "–" if target["value"] is None else f"{target['value']:g}"
        low, high = target.get("ci_low"), target.get("ci_high")
        interval = "–" if low is None or high is None else f"[{low:g}, {high:g}]"
        met = "yes" if target["met"] else "no"
        lines.append(f"| {name} | {value} | {interval} | {target['target']:g} | {met} |")
    headline = headline_markdown(summary)
    return "\n".join(lines + (["", headline] if headline else []))


def evaluate_stage(
    processed: Path, raw: Path, model: Path, syncnet: Path, out: Path, params: Params, device: torch.device
) -> None:
    """The `evaluate` stage: both protocols on held-out clips with the packaged model, baselines and
    ceiling; `out` gets metrics.json, the per-clip tables, the contact sheet, samples and summary.md."""
    ev = params.evaluate
    if out.exists() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise UserError(f"{out}: exists and is not an evaluation report folder; not replacing it")
    pipeline = load_pipeline(model, device=device)
    judge = load_syncnet(syncnet).to(device)
    landmarker = require("face_landmarker", params.pretrained.face_landmarker, "pretrained.face_landmarker")
    paper = load_paper_instruments(params.pretrained, landmarker, device)
    lpips, lpips_reason = paper.lpips, paper.instruments["lpips"].reason  # one VGG for both LPIPS scores
    scorer = Scorer(
        judge,
        landmarker,
        ev,
        params.syncnet.max_offset,
        device,
        params.vae.mouth,
        lpips,
        paper,
    )
    rows = select_clips(read_manifest(processed / "manifest.parquet"), raw, ev.split, ev.clips)
    if rows["identity"].nunique() < 2:
        raise UserError(
            f"{processed}: clean {ev.split} clips of {rows['identity'].nunique()} identities; "
            "dubbing needs two identities at least"
        )
    clips = [load_eval_clip(row, processed / "clips", raw, ev) for row in rows.itertuples()]
    log.info(
        "evaluating %d %s clips of %d identities (the first %d reconstructed too), DDIM %d steps, guidance %g",
        len(clips),
        ev.split,
        rows["identity"].nunique(),
        min(ev.reconstruction_clips or len(clips), len(clips)),
        ev.steps,
        pipeline.config.guidance,
    )
    with progress("clips") as bar:
        task = bar.add_task("evaluate", total=len(clips))
        result = evaluate(
            pipeline,
            clips,
            scorer,
            ev.steps,
            pipeline.config.seed,
            on_clip=lambda done, _: bar.update(task, completed=done),
            reconstruction_clips=ev.reconstruction_clips,
            keep_videos=max(ev.samples, ev.sheet_clips),
        )

    summary = summarize(result.rows)
    summary["protocol"] = {
        "split": ev.split,
        "clips": len(clips),
        "reconstruction_clips": min(ev.reconstruction_clips or len(clips), len(clips)),
        "identities": int(rows["identity"].nunique()),
        "frames_per_clip_max": ev.max_frames,
        "steps": ev.steps,
        "guidance": pipeline.config.guidance,
        "eta": pipeline.config.eta,
        "noise_scale": pipeline.config.noise_scale,
        "kept_cells": pipeline.config.kept_cells,
        "seed": pipeline.config.seed,
        "lpips": "on" if lpips is not None else f"disabled: {lpips_reason}",
    }
    summary["paper"] = {
        "instruments": paper.describe(),
        "frames": f"the aligned {pipeline.config.resolution} px faces, resized to {PAPER_SIZE} px",
        **result.fidelity,
    }
    check = None
    if ev.photo:
        check = photo_check(
            pipeline,
            astronaut(),
            clips[0],
            scorer,
            landmarker,
            ev.steps,
            pipeline.config.seed,
            ev.sheet_frames,
        )
        summary["photo"] = check.scores
    if out.exists():
        shutil.rmtree(out)  # an earlier report (checked above): replaced whole
    (out / "samples").mkdir(parents=True)
    write_json(out / "metrics.json", summary)
    table = per_clip_table(result)
    table.to_csv(out / "clips.csv", index=False, float_format="%.5g")
    dubbing_plot_table(table).to_csv(out / "dubbing_clips.csv", index=False, float_format="%.5g")
    opening_trace(result, clips[0].name).to_csv(out / "opening.csv", index=False)
    cv2.imwrite(
        str(out / "contact_sheet.png"),
        cv2.cvtColor(contact_sheet(result, ev.sheet_frames, ev.sheet_clips), cv2.COLOR_RGB2BGR),
    )
    for clip in list(result.videos)[: ev.samples]:
        write_sample(result, clip, out / "samples" / f"{clip}.mp4")
    # dvc.yaml declares the sheet: without the photo check it says so instead of being missing
    sheet = check.sheet if check is not None else _note_image("photo check off (evaluate.photo: false)")
    cv2.imwrite(str(out / "photo_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (out / "summary.md").write_text(
        "\n\n".join(
            part
            for part in (results_markdown(summary), paper_markdown(summary), photo_markdown(summary))
            if part
        )
        + "\n"
    )
    log.info("targets: %s", {k: v["met"] for k, v in summary["targets"].items()})
    log.info("wrote %s", out)
