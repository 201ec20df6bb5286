"""``dinofeat pca``: colour images (or a video) by the first principal components of their features."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dinofeat.cli.common import add_feature_options, add_model_options, number_in, positive_int

#: Inputs with these suffixes are read as videos (everything else as images).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
#: Video outputs the writer can produce (H.264).
VIDEO_OUTPUTS = (".mp4", ".m4v", ".mov", ".mkv")
IMAGE_OUTPUTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def foreground_option(text: str) -> str | float | None:
    """``otsu`` | ``none`` | a number (threshold on the scaled first component)."""
    if text.lower() in ("otsu", "none"):
        return None if text.lower() == "none" else "otsu"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected otsu, none or a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"threshold must be finite, got {text!r}")
    return value


unit_float = number_in(0, 1, "a number between 0 and 1")
percentile = number_in(0, 100, "a percentile between 0 and 100")


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "pca", help="colour images or a video by the principal components of their features",
        description="Show what DINOv2 sees: the first three principal components of the patch features "
        "as RGB. By default the first component of all patches is thresholded (Otsu) to find the "
        "foreground, a second PCA is fitted on foreground patches, each component is scaled by "
        "percentiles, and the background is black. Several images are fitted jointly, so the same "
        "part gets the same colour in each. A single video input (-o OUT.mp4) is coloured frame by "
        "frame with one PCA fitted on a sample of its frames.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, or one video (%s)"
                        % " ".join(VIDEO_SUFFIXES[:5]) + " ...")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="OUT",
                     help="one figure (a grid for several images; .png, .jpg, ...) or, for a video, "
                     "an .mp4/.mov/.mkv")
    out.add_argument("--out-dir", metavar="DIR", help="one file per input: DIR/<name>_pca.png (or .mp4)")
    layout = out.add_mutually_exclusive_group()
    layout.add_argument("--overlay", type=unit_float, metavar="ALPHA",
                        help="blend the colours over the image with this opacity instead of side by side")
    layout.add_argument("--pca-only", action="store_true", help="only the colours, without the image")
    out.add_argument("--transparent", action="store_true",
                     help="transparent background instead of black (PNG outputs; not with --overlay)")
    out.add_argument("--nearest", action="store_true",
                     help="crisp patches (nearest patch) instead of smooth bilinear upsampling")
    out.add_argument("--columns", type=positive_int, metavar="N",
                     help="panels per row of the grid figure (default: up to 4)")
    pca = parser.add_argument_group("PCA")
    pca.add_argument("--components", type=int, default=3, metavar="K",  # checked in run(): one-line error
                     help="components kept for --save-features (the colours use the first 3; default: 3)")
    pca.add_argument("--foreground", type=foreground_option, default="otsu", metavar="otsu|none|T",
                     help="foreground from the first component: otsu (automatic threshold), none (colour "
                     "every patch), or a threshold T on the first component scaled to 0..1 by the "
                     "percentiles (default: otsu)")
    pca.add_argument("--percentiles", type=percentile, nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"),
                     help="per-channel percentiles mapped to 0 and 255 (default: 1 99)")
    pca.add_argument("--save-pca", metavar="FILE.npz", help="save the fitted PCA to colour other inputs alike")
    pca.add_argument("--load-pca", metavar="FILE.npz", help="colour with a saved PCA instead of fitting one (its foreground threshold and colour "
                     "scaling are used; --foreground and --percentiles are ignored)")
    pca.add_argument("--save-features", metavar="FILE.npz",
                     help="write the first K components per patch: features_{i} (h, w, K) float32, "
                     "foreground_{i} (h, w) bool, image_size_{i} (w, h) (images only)")
    pca.add_argument("--fit-frames", type=positive_int, default=16, metavar="N",
                     help="video: frames sampled evenly to fit the PCA (default: %(default)s)")
    add_feature_options(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="B", help="images per forward pass")
    add_model_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from dinofeat.errors import InputError

    is_video = [Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.inputs]
    if any(is_video) and len(args.inputs) > 1:
        raise InputError("give one video, or only images (videos are coloured one at a time)")
    if args.components < 1:
        raise InputError(f"--components must be at least 1, got {args.components}")
    if not (args.output or args.out_dir or args.save_pca or args.save_features):
        raise InputError("nothing to write: give -o OUT, --out-dir DIR, --save-pca or --save-features")
    if args.transparent and args.overlay is not None:
        raise InputError("--transparent does not apply to --overlay (the image shows through the background)")
    if args.percentiles[0] >= args.percentiles[1]:
        raise InputError(f"--percentiles LOW HIGH needs LOW < HIGH, got {args.percentiles[0]:g} {args.percentiles[1]:g}")
    _check_suffix(args.save_pca, (".npz",), "--save-pca")
    _check_suffix(args.save_features, (".npz",), "--save-features")
    return _run_video(args) if is_video[0] else _run_images(args)


def _run_images(args: argparse.Namespace) -> int:
    from dinofeat.errors import InputError
    from dinofeat.images import load_image

    _check_suffix(args.output, IMAGE_OUTPUTS, "-o for images")
    if args.transparent and args.output and not args.output.lower().endswith(".png"):
        raise InputError("--transparent needs a .png output")
    targets = _out_dir_targets(args, ".png") if args.out_dir else []
    outputs = [args.output, *targets, args.save_pca, args.save_features]
    _check_outputs(outputs)
    loaded = _load_pca(args)
    if loaded is not None and args.components > loaded.n_components:
        raise InputError(f"--components {args.components}: the loaded PCA has only {loaded.n_components}")
    images = [load_image(path) for path in args.inputs]

    from dinofeat.cli.common import make_extractor

    extractor = make_extractor(args, batch_size=args.batch_size)
    _check_dim(loaded, extractor)
    maps = extractor.extract_arrays(images)
    pca = loaded or _fit(args, extractor, maps)

    from dinofeat.drawing import draw_pca_grid
    from dinofeat.outputs import staged_outputs

    panels = [_panel(args, image, pca.colorize(fmap, nearest=args.nearest)) for image, fmap in zip(images, maps)]
    with staged_outputs(outputs) as (figure_tmp, *rest):
        panel_tmps, pca_tmp, features_tmp = rest[:len(targets)], rest[-2], rest[-1]
        if figure_tmp is not None:
            figure = panels[0] if len(panels) == 1 else draw_pca_grid(panels, columns=args.columns)
            _write_image(figure_tmp, figure)
        for tmp, panel in zip(panel_tmps, panels):
            _write_image(tmp, panel)
        if pca_tmp is not None:
            pca.save(pca_tmp)
        if features_tmp is not None:
            _write_features(features_tmp, pca, maps, args.components, _metadata(args, extractor))
    _summary(pca, maps, [p for p in outputs if p])
    return 0


def _run_video(args: argparse.Namespace) -> int:
    from dinofeat.errors import InputError
    from dinofeat.outputs import staged_outputs
    from dinofeat.pca import colorize_video, fit_video
    from dinofeat.video import VideoWriter, probe_video

    if args.save_features:
        raise InputError("--save-features is for images; extract frames first to save reduced video features")
    if args.transparent:
        raise InputError("--transparent is for PNG images; videos have no alpha channel")
    if args.output and args.out_dir:
        raise InputError("a video gives one output: use -o OUT.mp4 or --out-dir DIR, not both")
    _check_suffix(args.output, VIDEO_OUTPUTS, "-o for a video")
    target = args.output or (_out_dir_targets(args, ".mp4")[0] if args.out_dir else None)
    outputs = [target, args.save_pca]
    _check_outputs(outputs)
    loaded = _load_pca(args)
    info = probe_video(args.inputs[0])

    from dinofeat.cli.common import make_extractor

    extractor = make_extractor(args, batch_size=args.batch_size)
    _check_dim(loaded, extractor)
    pca = loaded or fit_video(extractor, args.inputs[0], sample_frames=args.fit_frames, **_fit_options(args, extractor))
    width, height = info.size_wh
    size_wh = (2 * width, height) if args.overlay is None and not args.pca_only else (width, height)
    with staged_outputs(outputs) as (video_tmp, pca_tmp):
        if video_tmp is not None:
            from tqdm import tqdm

            frames = colorize_video(extractor, pca, args.inputs[0], nearest=args.nearest)
            with VideoWriter(video_tmp, info.fps, size_wh) as sink:
                for _, frame, colors in tqdm(frames, total=info.frames, unit="frame", disable=None):
                    if frame.shape[:2] != (height, width):
                        raise InputError(f"frame size changes within {args.inputs[0]}; cannot write one video")
                    sink.write(_panel(args, frame, colors))
        if pca_tmp is not None:
            pca.save(pca_tmp)
    print(f"dinofeat pca: {info.frames} frames at {info.fps:g} fps -> {', '.join(p for p in outputs if p)}")
    return 0


# -- helpers ------------------------------------------------------------------------------------
def _fit_options(args: argparse.Namespace, extractor) -> dict:
    return dict(n_components=args.components, foreground=args.foreground, percentiles=tuple(args.percentiles),
                metadata=_metadata(args, extractor))


def _fit(args: argparse.Namespace, extractor, maps):
    from dinofeat.pca import FeaturePCA

    return FeaturePCA.fit(maps, **_fit_options(args, extractor))


def _metadata(args: argparse.Namespace, extractor) -> dict:
    return {"model": extractor.spec.name, "layers": ",".join(map(str, extractor.layers)), "facet": extractor.facet,
            "stride": extractor.stride, "resolution": args.resolution}


def _panel(args: argparse.Namespace, image, colors):
    from dinofeat.drawing import draw_pca_overlay, draw_pca_side_by_side

    if args.overlay is not None:
        return draw_pca_overlay(image, colors.rgb, args.overlay, colors.mask)
    pca_image = colors.rgba() if args.transparent else colors.rgb
    return pca_image if args.pca_only else draw_pca_side_by_side(image, pca_image)


def _check_suffix(path: str | None, allowed: tuple[str, ...], what: str) -> None:
    from dinofeat.errors import InputError

    if path is not None and Path(path).suffix.lower() not in allowed:
        raise InputError(f"{what} must end in {', '.join(allowed)}, got {path}")


def _check_outputs(paths) -> None:
    from dinofeat.errors import InputError
    from dinofeat.outputs import check_writable

    given = [Path(p).resolve() for p in paths if p]
    if len(set(given)) != len(given):
        raise InputError("two outputs would go to the same file")
    for path in paths:
        if path:
            check_writable(path)


def _out_dir_targets(args: argparse.Namespace, suffix: str) -> list[str]:
    from dinofeat.errors import InputError

    folder = Path(args.out_dir)
    if not folder.is_dir():
        raise InputError(f"--out-dir must be an existing folder: {folder}")
    stems = [Path(p).stem for p in args.inputs]
    unique = len(set(stems)) == len(stems)
    return [str(folder / (f"{stem}_pca{suffix}" if unique else f"{i:03d}_{stem}_pca{suffix}"))
            for i, stem in enumerate(stems)]


def _load_pca(args: argparse.Namespace):
    if not args.load_pca:
        return None
    from dinofeat.pca import FeaturePCA

    return FeaturePCA.load(args.load_pca)


def _check_dim(pca, extractor) -> None:
    """A loaded PCA must fit the features this model/layers produce (checked before any image is run)."""
    if pca is None:
        return
    import logging

    from dinofeat.errors import InputError

    dim = extractor.spec.embed_dim * len(extractor.layers)
    fitted = (pca.metadata or {}).get("model", "unknown model")
    if pca.dim != dim:
        raise InputError(f"the loaded PCA was fitted on {pca.dim}-dimensional features ({fitted}); "
                         f"{extractor.spec.name} with {len(extractor.layers)} layer(s) gives {dim}")
    if fitted != extractor.spec.name:
        logging.getLogger(__name__).warning("the loaded PCA was fitted on %s features, these are %s",
                                            fitted, extractor.spec.name)


def _write_features(path, pca, maps, components: int, metadata: dict) -> None:
    """``features_{i}`` (h, w, K) float32 + ``foreground_{i}`` (h, w) bool + geometry, as ``dinofeat extract``."""
    from dataclasses import replace

    import numpy as np

    from dinofeat.featurefile import feature_arrays

    reduced = [pca.reduce(fmap) for fmap in maps]
    arrays = feature_arrays([replace(r, features=r.features[..., :components]) for r in reduced])
    for i, fmap in enumerate(maps):
        arrays[f"foreground_{i}"] = pca.foreground_mask(fmap.features).cpu().numpy()
    arrays["explained_variance"] = pca.basis.explained_variance[:components].numpy()
    text = {**metadata, "patch_size": maps[0].patch_size}
    with open(path, "wb") as f:
        np.savez(f, **arrays, **{k: np.asarray(str(v)) for k, v in text.items()})


def _write_image(path, image) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def _summary(pca, maps, outputs) -> None:
    fg = pca.foreground
    if fg is None:
        split = "no foreground split"
    else:
        share = sum(int(pca.foreground_mask(m.features).sum()) for m in maps) / sum(m.grid_hw[0] * m.grid_hw[1] for m in maps)
        split = f"foreground {share:.0%} of patches ({fg.method} threshold {fg.threshold:.3g})"
    print(f"dinofeat pca: {len(maps)} image(s), {split} -> {', '.join(map(str, outputs)) or 'nothing'}")
