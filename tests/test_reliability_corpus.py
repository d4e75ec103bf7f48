"""The bad-input corpus: every case goes through the real ``jepa-eval`` CLI and must end with exit code 2,
exactly one ``jepa-eval: error:`` line (the last line on stderr), no traceback, no result record and no
temporary file. ``CASES`` is the table documented in docs/RELIABILITY.md (case -> behaviour chosen)."""
from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import ijepa_reference as ref
from _reliability import SPEC, assert_clean_failure, cli_inprocess, cli_subprocess, knn_entry, write_battery


@dataclass
class Case:
    id: str
    setup: Callable[[Path], list]       # builds the bad input under a folder, returns the CLI arguments
    expect: str                         # a regular expression the error line must match
    behaviour: str                      # what the suite does (the documented choice)
    check: Callable[[Path], None] | None = None   # extra postconditions (e.g. a marker file never appears)
    subprocess: bool = False            # run as a separate `python -m jepa_eval` process
    preexec: Callable[[], None] | None = field(default=None, repr=False)


def run_args(d: Path, checkpoint, battery: Path | None = None) -> list:
    battery = battery or write_battery(d / "ok.yaml", knn_entry())
    return ["run", "--checkpoint", checkpoint, "--battery", battery, "--out", d / "out", "--cache", d / "cache",
            "--no-progress"]


# ---------------------------------------------------------------- checkpoints
def official(d: Path, mutate: Callable[[dict], None] | None = None, name: str = "ijepa.pth.tar",
             pred_width: int = 48) -> Path:
    """A small official-layout I-JEPA file (width 192 -> 3 heads, 16 px, patch 8), optionally damaged."""
    sds = ref.official_state_dicts(width=192, depth=1, heads=3, patch=8, img=16, pred_width=pred_width,
                                   pred_depth=1)
    if mutate:
        mutate(sds)
    path = d / name
    ref.save_official(path, sds)
    return path


def text_file(d: Path) -> list:
    (d / "notes.pth.tar").write_text("epoch 300, lr 1e-3: remember to upload the weights\n")
    return run_args(d, d / "notes.pth.tar")


def truncated(d: Path) -> list:
    full = official(d, name="full.pth.tar").read_bytes()
    (d / "cut.pth.tar").write_bytes(full[: len(full) // 2])
    return run_args(d, d / "cut.pth.tar")


def resnet(d: Path) -> list:
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), d / "resnet18.pth")
    return run_args(d, d / "resnet18.pth")


MARKER = "code-ran.txt"


class _Payload:
    """Unpickling this calls open(MARKER, "w"): a checkpoint that would run code when loaded."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def unsafe_pickle(d: Path) -> list:
    torch.save({"encoder": _Payload(str(d / MARKER)), "epoch": 1}, d / "evil.pth.tar")
    return run_args(d, d / "evil.pth.tar")


def marker_absent(d: Path) -> None:
    assert not (d / MARKER).exists(), "the checkpoint's pickle ran code"


def missing_key(d: Path) -> list:
    return run_args(d, official(d, lambda sds: sds["target_encoder"].pop("blocks.0.attn.proj.bias")))


def wrong_shape(d: Path) -> list:
    return run_args(d, official(d, lambda sds: sds["encoder"].update({"norm.weight": torch.ones(96)})))


def predictor_heads(d: Path) -> list:
    return run_args(d, official(d, pred_width=32))


def nan_weights(d: Path) -> list:
    return run_args(d, official(d, lambda sds: sds["target_encoder"]["blocks.0.mlp.fc1.weight"].fill_(float("nan"))))


def inf_weights(d: Path) -> list:
    return run_args(d, official(d, lambda sds: sds["target_encoder"]["patch_embed.proj.bias"].fill_(float("inf"))))


def no_feature_entry(d: Path) -> None:
    cache = d / "cache"
    finished = [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".partial")] if cache.exists() else []
    assert not finished, f"bad features were cached: {finished}"


# ---------------------------------------------------------------- data
def png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (value, 255 - value, value // 2)).save(path)


def image_folder(d: Path, broken: bool = False, empty: bool = False) -> Path:
    root = d / "folder"
    for split in ("train", "val"):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(4):
                png(root / split / cls / f"{cls}{i}.png", 60 * c + 10 * i)
    if empty:
        (root / "train" / "cicada").mkdir()
    if broken:  # a download cut short: a JPEG header, then nothing that decodes
        (root / "train" / "bee" / "bee9.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40)
    return root


def folder_battery(d: Path, **kw) -> list:
    root = image_folder(d, **kw)
    entry = knn_entry("imagefolder", root=root, splits="{train: train, test: val}", train=100, test=100)
    return run_args(d, SPEC, write_battery(d / "folder.yaml", entry))


def lowshot_subset_file(d: Path) -> list:
    root = d / "folder"
    for split in ("train", "val"):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(4):
                png(root / split / cls / f"{cls}_{i}.png", 60 * c + 10 * i)
    subset = d / "1percent.txt"
    subset.write_text("ant_0.png\nant_1.png\nbee_0.png\nbee_7.png\nbee_8.png\n")  # bee_7, bee_8: absent
    entry = (f"task: lowshot\ndataset: imagefolder\nroot: {root}\nsplits: {{train: train, test: val}}\n"
             f"params: {{subset_files: ['{subset}'], n_folds: 2}}")
    return run_args(d, SPEC, write_battery(d / "lowshot.yaml", entry))


def lowshot_too_many_shots(d: Path) -> list:
    # 40 digits, class-stratified: 4 images per class, but 12 are asked for
    entry = "task: lowshot\ndataset: digits\nmax_samples: {train: 40, test: 20}\nparams: {k_per_class: 12}"
    return run_args(d, SPEC, write_battery(d / "lowshot.yaml", entry))


def clevr(d: Path, drop_scenes: bool = False, drop_pixel_coords: bool = False) -> list:
    from jepa_eval.cli import main
    root = d / "clevr"
    assert main(["make-clevr", "--out", str(root), "--n-train", "3", "--n-val", "2", "--size", "16",
                 "--workers", "1", "--supersample", "1"]) == 0
    scenes = root / "scenes" / "CLEVR_train_scenes.json"
    if drop_scenes:
        scenes.unlink()
    if drop_pixel_coords:
        data = json.loads(scenes.read_text())
        del data["scenes"][1]["objects"][0]["pixel_coords"]
        scenes.write_text(json.dumps(data))
    entry = knn_entry("clevr-count", root=root, splits="{train: train, test: test}", train=3, test=2)
    return run_args(d, SPEC, write_battery(d / "clevr.yaml", entry))


# ---------------------------------------------------------------- batteries and output
def bad_battery(d: Path, text: str) -> list:
    (d / "bad.yaml").write_text(text)
    return run_args(d, SPEC, d / "bad.yaml")


def unwritable_out(d: Path) -> list:
    (d / "plain-file").write_text("a file where the results folder should go\n")
    args = run_args(d, SPEC)
    args[args.index("--out") + 1] = d / "plain-file" / "results"   # root or not, no folder can be made here
    return args


def prefill_cache(d: Path) -> None:
    """Extract the features in this process first, so the child's first big write is the record."""
    from jepa_eval.cli import main
    battery = write_battery(d / "ok.yaml", knn_entry())
    assert main(["run", "--checkpoint", SPEC, "--battery", str(battery), "--out", str(d / "warm"),
                 "--cache", str(d / "cache"), "--no-progress"]) == 0


def record_write_error(d: Path) -> list:
    prefill_cache(d)
    return run_args(d, SPEC)


def small_file_limit() -> None:
    # files may not grow past 600 bytes: a record (a few kB) fails half-written with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))


# ---------------------------------------------------------------- issue 19: what a user types
def png_solid(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)


COLOURS = {"ant": (250, 10, 10), "bee": (10, 250, 10), "cicada": (10, 10, 250)}


def colour_folder(d: Path, train: tuple[str, ...], val: tuple[str, ...]) -> Path:
    """A folder k-NN on raw pixels separates perfectly: each class is one solid colour (slightly varied)."""
    root = d / "colours"
    for split, classes in (("train", train), ("val", val)):
        for cls in classes:
            r, g, b = COLOURS[cls]
            for i in range(3):
                png_solid(root / split / cls / f"{cls}{i}.png", (r - 3 * i, g + 2 * i, b))
    return root


def colour_battery(d: Path, train: tuple[str, ...], val: tuple[str, ...], checkpoint: str = "pixels:8") -> list:
    root = colour_folder(d, train, val)
    entry = (f"task: knn\nid: colours\ndataset: imagefolder\nroot: {root}\nsplits: {{train: train, test: val}}\n"
             f"params: {{ks: [1]}}")
    return run_args(d, checkpoint, write_battery(d / "colours.yaml", entry))


def entry_battery(d: Path, *lines: str, base: str = "") -> list:
    """A k-NN entry on digits with extra or replaced lines."""
    return run_args(d, SPEC, write_battery(d / "entry.yaml", (base or knn_entry()) + "".join("\n" + ln for ln in lines)))


def with_root(d: Path, root: str) -> list:
    return run_args(d, SPEC, write_battery(d / "fm.yaml", knn_entry("[fashion-mnist, digits]"))) + ["--root", root]


TINY_PRETRAIN = (Path(__file__).resolve().parents[1] / "pretrain" / "configs" / "tiny-digits.yaml").read_text()


def pretrain_config(d: Path, old: str, new: str) -> list:
    assert old in TINY_PRETRAIN, old
    (d / "pre.yaml").write_text(TINY_PRETRAIN.replace(old, new))
    return ["pretrain", "--config", d / "pre.yaml", "--out", d / "out", "--max-steps", "1"]


def no_checkpoint(d: Path) -> None:
    assert not list(d.rglob("*.pth.tar")), "a checkpoint was written from a bad config"


def decoder_config(d: Path, text: str) -> list:
    (d / "dec.yaml").write_text(text)
    return ["decoder", "train", "--checkpoint", SPEC, "--dataset", "digits", "--out", d / "out", "--config",
            d / "dec.yaml"]


def tensor_as_encoder(d: Path) -> list:
    torch.save({"encoder": torch.zeros(192, 3, 8, 8), "epoch": 1}, d / "flat.pth.tar")
    return run_args(d, d / "flat.pth.tar")


CASES = [
    Case("missing-file", lambda d: run_args(d, d / "nowhere.pth.tar"), r"checkpoint not found: .*nowhere\.pth\.tar",
         "refused before anything runs; names the path"),
    Case("text-file-named-pth-tar", text_file, r"not a PyTorch checkpoint",
         "refused: the bytes are not a pickle"),
    Case("truncated-checkpoint", truncated, r"not a readable PyTorch checkpoint \(truncated or corrupt\?\)",
         "refused: the zip archive is incomplete"),
    Case("resnet-state-dict", resnet, r"not an I-JEPA ViT encoder: missing patch_embed\.proj\.weight",
         "refused: another architecture; names the missing ViT keys and shows keys it found"),
    Case("pickle-that-runs-code", unsafe_pickle, r"refusing to load .*evil\.pth\.tar: its pickle asks to import",
         "refused by weights_only loading before any code runs (the marker file never appears)",
         check=marker_absent, subprocess=True),
    Case("official-missing-key", missing_key,
         r"ijepa\.pth\.tar\[target_encoder\] does not match its architecture: "
         r"missing keys: blocks\.0\.attn\.proj\.bias",
         "strict loading: names the missing key"),
    Case("official-wrong-shape", wrong_shape,
         r"\[encoder\] .*shape mismatches: norm\.weight \(96,\) vs expected \(192,\)",
         "strict loading: names the key and both shapes"),
    Case("predictor-width-not-divisible-by-heads", predictor_heads,
         r"\[predictor\]: predictor width 32 is not divisible by the encoder's 3 heads",
         "refused when the predictor is built (it was an assertion inside timm)"),
    Case("image-size-not-divisible-by-patch",
         lambda d: run_args(d, "timm:vit_tiny_patch16_224,img_size=20,patch_size=8,depth=2"),
         r"image size 20 is not divisible by the patch size 8", "refused when the model is built"),
    Case("imagefolder-empty-class", lambda d: folder_battery(d, empty=True),
         r"class folder\(s\) without images in .*train: cicada", "refused before extraction; names the class"),
    Case("corrupt-jpeg", lambda d: folder_battery(d, broken=True), r"corrupt or unreadable image .*bee9\.jpg",
         "fail (not skip): the extraction stops at the file, names it and asks to remove or replace it; "
         "nothing is cached or recorded", check=no_feature_entry),
    Case("lowshot-subset-names-absent-images", lowshot_subset_file,
         r"2 of 5 images of 1percent\.txt are not in the training split \(first: bee_7\.png\)",
         "refused; names the subset file, how many images are absent and the first one"),
    Case("lowshot-more-shots-than-images", lowshot_too_many_shots,
         r"k_per_class is 12 but class '\d' has only 4 training images \(10 classes have fewer than 12\)",
         "refused (it used to take all images of such a class silently); names the class"),
    Case("clevr-without-scenes-json", lambda d: clevr(d, drop_scenes=True),
         r"CLEVR scenes file not found: .*CLEVR_train_scenes\.json", "refused; says how to render or get one"),
    Case("clevr-scene-without-pixel-coords", lambda d: clevr(d, drop_pixel_coords=True),
         r"scene 1 \(CLEVR_train_000001\.png\) has an object without pixel_coords",
         "refused; names the scene (Dist labels need the depth)"),
    Case("nan-weights", nan_weights, r"NaN/inf features for images 0-\d+ of digits",
         "refused at the first batch; nothing cached or recorded", check=no_feature_entry),
    Case("inf-weights", inf_weights, r"NaN/inf features", "as NaN", check=no_feature_entry),
    Case("battery-unknown-task", lambda d: bad_battery(d, "tasks:\n  - task: knm\n    dataset: digits\n"),
         r"unknown task 'knm' \(did you mean 'knn'\?\)", "battery validated before anything runs"),
    Case("battery-wrongly-typed-parameter",
         lambda d: bad_battery(d, "tasks:\n  - task: knn\n    dataset: digits\n    params: {temperature: warm}\n"),
         r"task 'knn': parameter 'temperature' must be a number, got 'warm'",
         "battery type-checked before anything runs"),
    Case("unwritable-output-folder", unwritable_out, r"output folder .* is not writable",
         "checked by a test write before any work"),
    Case("write-error-mid-record", record_write_error, r"could not write the record .*: File too large \([\d.]+ [kMGT]?B free "
         r"there\); nothing was recorded", "the half-written temporary file is removed; no record, the job reruns next time",
         subprocess=True, preexec=small_file_limit),
    # ---- issue 19: every value a user types is checked before any work (one validation path)
    Case("imagefolder-split-with-class-not-in-train", lambda d: colour_battery(d, ("ant", "bee"), ("ant", "cicada")),
         r"has class folder\(s\) that .*train lacks: cicada",
         "refused: labels come from one class index (train/), and a test class outside it has no label"),
    Case("imagefolder-one-class", lambda d: colour_battery(d, ("ant",), ("ant",)),
         r"task 'knn' classifies, but the 'train' split of imagefolder has 1 class\(es\)",
         "refused before extraction: a classification task needs at least two classes"),
    Case("root-folder-missing", lambda d: with_root(d, f"fashion-mnist={d / 'nowhere'}"),
         r"--root fashion-mnist=.*nowhere: folder not found",
         "refused (it used to read the system copy silently and record the missing folder as root)"),
    Case("root-unknown-dataset", lambda d: with_root(d, f"fashon-mnist={d}"),
         r"unknown dataset 'fashon-mnist' \(did you mean 'fashion-mnist'\?\)", "refused; suggests the name"),
    Case("root-without-the-data", lambda d: with_root(d, f"fashion-mnist={d}"),
         r"fashion-mnist not found \(looked in [^,]*\)",
         "refused: a root the user gives is the only place looked in, and no other alternative is tried"),
    Case("battery-dataset-alternative-typo", lambda d: entry_battery(d, base=knn_entry("[fashon-mnist, digits]")),
         r"unknown dataset 'fashon-mnist' \(did you mean 'fashion-mnist'\?\)",
         "refused: a typo is an error, not a fallback to the next alternative"),
    Case("battery-entry-id-escapes-out", lambda d: entry_battery(d, base=knn_entry(entry_id="../../../escaped")),
         r"id '\.\./\.\./\.\./escaped' must be a plain name",
         "refused: ids name record files, so none can be written outside --out"),
    Case("battery-max-samples-unknown-role",
         lambda d: entry_battery(d, base=knn_entry().replace("test: 20", "tset: 20")),
         r"max_samples names the role 'tset' \(did you mean 'test'\?\)", "refused; suggests the role"),
    Case("battery-boolean-as-integer", lambda d: entry_battery(d, base=knn_entry().replace("train: 40", "train: true")),
         r"max_samples\.train must be a positive integer, got True", "refused: booleans are not numbers"),
    Case("battery-boolean-in-params", lambda d: entry_battery(d, base=knn_entry().replace("ks: [5]", "ks: [true]")),
         r"parameter 'ks' must be a list of integers, got \[True\]", "refused: booleans are not numbers"),
    Case("battery-unknown-split-role", lambda d: entry_battery(d, "splits: {train: train, tset: test}"),
         r"task 'knn' has no split role 'tset'", "refused (it used to extract an extra split nobody reads)"),
    Case("battery-unknown-top-level-key",
         lambda d: bad_battery(d, "description: x\ntask:\n  - task: knn\ntasks:\n  - task: knn\n    dataset: digits\n"),
         r"unknown top-level key 'task'", "refused"),
    Case("knn-k-above-training-set", lambda d: entry_battery(d, base=knn_entry().replace("ks: [5]", "ks: [5, 200]")),
         r"ks \[200\] exceed the 40 training images",
         "refused before extraction (never computed with a smaller k under the name top1_k200)"),
    Case("knn-k-above-training-set-in-a-later-entry",
         lambda d: run_args(d, SPEC, write_battery(d / "two.yaml", knn_entry(entry_id="fine"),
                                                   knn_entry(entry_id="too-big").replace("ks: [5]", "ks: [50]"))),
         r"entry 'too-big' on digits: ks \[50\] exceed the 40 training images",
         "refused before any job runs: the valid entry before it is not recorded either"),
    Case("pretrain-negative-lr", lambda d: pretrain_config(d, "  lr: 1.0e-3", "  lr: -1.0e-3"),
         r"pre\.yaml: optimization: lr must be positive, got -0\.001", "refused before training",
         check=no_checkpoint),
    Case("pretrain-lr-not-a-number", lambda d: pretrain_config(d, "  lr: 1.0e-3", "  lr: abc"),
         r"key 'optimization\.lr' must be a number, got 'abc'", "refused", check=no_checkpoint),
    Case("pretrain-patch-size-zero", lambda d: pretrain_config(d, "patch_size: 4", "patch_size: 0"),
         r"patch_size must be a positive integer, got 0", "refused (was a ZeroDivisionError traceback)",
         check=no_checkpoint),
    Case("pretrain-patch-size-not-dividing-image", lambda d: pretrain_config(d, "patch_size: 4", "patch_size: 5"),
         r"img_size 16 is not divisible by patch_size 5", "refused", check=no_checkpoint),
    Case("pretrain-checkpoint-every-zero", lambda d: pretrain_config(d, "checkpoint_every: 1", "checkpoint_every: 0"),
         r"checkpoint_every must be >= 1", "refused before training (was a traceback after a full epoch)",
         check=no_checkpoint),
    Case("pretrain-mask-scale-above-one",
         lambda d: pretrain_config(d, "pred_mask_scale: [0.15, 0.25]", "pred_mask_scale: [0.15, 1.25]"),
         r"pred_mask_scale \[0\.15, 1\.25\] must be \(min, max\) with 0 < min <= max <= 1", "refused",
         check=no_checkpoint),
    Case("pretrain-boolean-as-integer", lambda d: pretrain_config(d, "batch_size: 32", "batch_size: yes"),
         r"key 'data\.batch_size' must be an integer, got True", "refused", check=no_checkpoint),
    Case("decoder-config-negative-lr", lambda d: decoder_config(d, "train: {lr: -1e-3}\n"),
         r"dec\.yaml: train: lr and grad_clip must be positive", "refused before any data is read"),
    Case("decoder-config-wrong-type", lambda d: decoder_config(d, "train: {max_steps: 1e3}\n"),
         r"key 'train\.max_steps' must be an integer, got 1000\.0", "refused (no silent rounding)"),
    Case("checkpoint-encoder-is-a-tensor", tensor_as_encoder,
         r"flat\.pth\.tar\[encoder\] holds a tensor of shape \(192, 3, 8, 8\), not a state dict",
         "refused (was a KeyError traceback)"),
    Case("timm-spec-patch-size-zero",
         lambda d: run_args(d, "timm:vit_tiny_patch16_224,img_size=16,patch_size=0,depth=2"),
         r"patch_size must be a positive integer, got 0", "refused (was a ZeroDivisionError traceback)"),
    Case("timm-spec-embed-dim-not-divisible-by-heads",
         lambda d: run_args(d, "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=1,embed_dim=100"),
         r"cannot be built with .*dim should be divisible by num_heads", "timm's own refusal, as one line"),
    Case("cli-batch-size-zero", lambda d: ["features", "--checkpoint", SPEC, "--dataset", "digits", "--cache",
                                           d / "cache", "--batch-size", "0"],
         r"argument --batch-size: expected a positive integer, got '0'", "refused at parse time (argparse type)",
         subprocess=True),
    Case("cli-interval-nan", lambda d: ["watch", d, "--battery", "smoke", "--out", d / "out", "--interval", "nan"],
         r"argument --interval: expected a positive number, got 'nan'", "refused at parse time (argparse type)",
         subprocess=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys) -> None:
    argv = case.setup(tmp_path)
    if case.subprocess:
        proc = cli_subprocess(argv, preexec_fn=case.preexec)
        code, err = proc.returncode, proc.stderr
    else:
        code, _, err = cli_inprocess(capsys, argv)
    assert_clean_failure(code, err, tmp_path / "out", case.expect)
    if case.check:
        case.check(tmp_path)


def test_the_corpus_is_big_enough_and_documented() -> None:
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, f"cases not in docs/RELIABILITY.md: {missing}"
