"""Decoder sanity: do the samples carry what their conditioning representation knows?

Draws ``jepa-eval decoder sample`` arrays (fixed seed) and reports, for the decoder's mode:
- label agreement: the class an independent pixel classifier (logistic regression on training-split
  pixels; its own test accuracy is reported) gives each sample, against the source image's label;
- the same for the shuffled control (conditioned on another image's representation);
- d(own)/d(other): mean pixel distance of own-conditioned samples to their image over that of the
  control's samples to the same image (inside the box in predictor mode); < 1 means the condition is used;
- a nearest-neighbour ceiling: the label agreement of the training image whose representation (the
  decoder's reps.npz) is closest, by cosine, to the condition.
Predictor mode reports all of it for samples from the predictor's output and from the true target
representation. Writes benchmarks/results/decoder/sanity-<mode>.json.

    python benchmarks/decoder_sanity.py --checkpoint CK --decoder DIR [--dataset fashion-mnist] [--n 200]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jepa_eval.checkpoint import load_checkpoint  # noqa: E402
from jepa_eval.datasets import get_dataset  # noqa: E402
from jepa_eval.decoder import load_decoder  # noqa: E402
from jepa_eval.decoder.cache import to_uint8  # noqa: E402
from jepa_eval.decoder.features import pool_tokens, to_unit  # noqa: E402
from jepa_eval.decoder.sample import pick_images, predictor_conditions  # noqa: E402
from jepa_eval.decoder.sample import sample_image_mode, sample_predictor_mode  # noqa: E402
from pretrain.masks import MaskConfig  # noqa: E402


def pixel_classifier(dataset: str, root: str | None, size: int, channels: int, n_train: int, n_test: int,
                     seed: int = 0) -> tuple[object, float]:
    """Logistic regression on raw training pixels (independent of the encoder), and its test accuracy."""
    from sklearn.linear_model import LogisticRegression

    def arrays(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        ds = get_dataset(dataset, root, split=split, image_size=size, max_samples=n, seed=seed)
        x, y = zip(*(ds[i] for i in range(len(ds))))
        return flat(to_uint8(to_unit(torch.stack(x)), channels).transpose(0, 2, 3, 1)), np.array(y)

    xtr, ytr = arrays("train", n_train)
    xte, yte = arrays("test", n_test)
    clf = LogisticRegression(max_iter=300, C=0.05).fit(xtr, ytr)
    return clf, float((clf.predict(xte) == yte).mean())


def flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).astype(np.float32) / 255.0


def agreement(clf: object, samples: np.ndarray, labels: np.ndarray) -> float:
    return float((clf.predict(flat(samples)) == labels).mean())


def nn_labels(train_reps: np.ndarray, train_labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    a = train_reps / np.linalg.norm(train_reps, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return train_labels[(q @ a.T).argmax(1)]


def dist(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    d = (a.astype(np.float32) - b.astype(np.float32)) / 255.0
    if mask is not None:
        d = d * mask
    return np.sqrt((d ** 2).reshape(len(d), -1).sum(1))


def box_masks(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    m = np.zeros((len(boxes), h, w, 1), dtype=np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        m[i, y1:y2, x1:x2] = 1
    return m


@torch.no_grad()
def run(ck, decoder, folder: Path, ds, clf, n: int, seed: int, ddim_steps: int, guidance: float) -> dict:
    spec = decoder.spec
    # the ceilings need the training representations; a shipped decoder folder carries none
    cache = np.load(folder / "reps.npz") if (folder / "reps.npz").is_file() else None
    res: dict = {}
    if spec.condition == "image":
        a = sample_image_mode(ck, decoder, ds, n, seed, ddim_steps, guidance)
        labels, perm = a["labels"], a["perm"]
        images, _ = pick_images(ds, n, seed)
        pooled = ck.target_encoder(images).mean(1).numpy()
        kinds = [("", "cond_true", "cond_other")]
        if guidance:
            kinds.append(("cfg_", "cond_true_cfg", "cond_other_cfg"))
        for pre, own, other in kinds:
            res[pre + "agreement_own"] = agreement(clf, a[own], labels)
            res[pre + "agreement_shuffled"] = agreement(clf, a[other], labels)
            res[pre + "shuffled_agrees_with_its_source"] = agreement(clf, a[other], labels[perm])
            res[pre + "ratio_d_own_d_other"] = float(dist(a[own], a["images"]).mean() / dist(a[other], a["images"]).mean())
        res["nn_ceiling"] = None if cache is None else \
            float((nn_labels(cache["pooled"], cache["labels"], pooled) == labels).mean())
        res["real_images_agreement"] = agreement(clf, a["images"], labels)
        return res
    a = sample_predictor_mode(ck, decoder, ds, n, seed, ddim_steps, guidance)
    labels = a["labels"]
    h, w = a["images"].shape[1:3]
    m = box_masks(a["boxes"], h, w)
    d_other = dist(a["from_other"], a["images"], m).mean()
    for name in ("from_pred", "from_true", "from_other"):
        res[f"agreement_{name}"] = agreement(clf, a[name], labels)
        res[f"ratio_d_{name}_d_other"] = float(dist(a[name], a["images"], m).mean() / d_other)
    res["agreement_context_only"] = agreement(clf, a["context"], labels)
    res["real_images_agreement"] = agreement(clf, a["images"], labels)
    if cache is None:
        return {**res, "nn_ceiling_pred": None, "nn_ceiling_true": None}
    # ceilings: the training image whose representation of the same block is closest to the condition
    masks = MaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.extra["masks"].items()})
    images, _ = pick_images(ds, n, seed)
    c = predictor_conditions(ck, images, masks, seed)
    train_tokens = torch.as_tensor(cache["tokens"]).float()
    for name in ("pred", "true"):
        hits = []
        for i, idx in enumerate(c["idx"]):
            reps = pool_tokens(train_tokens, idx.expand(len(train_tokens), -1)).numpy()
            hits.append(nn_labels(reps, cache["labels"], c[name][i:i + 1].numpy())[0] == labels[i])
        res[f"nn_ceiling_{name}"] = float(np.mean(hits))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--decoder", required=True)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=0.0, help="also report guided samples (w > 0)")
    p.add_argument("--classifier-train", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    ck = load_checkpoint(a.checkpoint)
    decoder = load_decoder(a.decoder)
    size = int(ck.meta["img_size"])
    clf, clf_acc = pixel_classifier(a.dataset, a.root, size, decoder.spec.channels, a.classifier_train, 2000)
    ds = get_dataset(a.dataset, a.root, split=a.split, image_size=size)
    res = run(ck, decoder, Path(a.decoder), ds, clf, a.n, a.seed, a.ddim_steps, a.guidance)
    mode = "predictor" if decoder.spec.condition == "region" else "image"
    res.update(mode=mode, classifier="logistic regression on pixels", classifier_train_images=a.classifier_train,
               classifier_test_accuracy=clf_acc, n_images=a.n, seed=a.seed, ddim_steps=a.ddim_steps,
               guidance=a.guidance, checkpoint=str(a.checkpoint), decoder=str(a.decoder), dataset=a.dataset,
               split=a.split, decoder_steps=_steps(Path(a.decoder)), seconds=round(time.time() - t0, 1))
    for k, v in res.items():
        print(f"{k:38s} {v:.3f}" if isinstance(v, float) else f"{k:38s} {v}")
    out = Path(a.out or Path(__file__).parent / "results" / "decoder" / f"sanity-{mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {out}")


def _steps(folder: Path) -> int | None:
    log = folder / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return json.loads(lines[-1])["step"] if lines else None


if __name__ == "__main__":
    main()
