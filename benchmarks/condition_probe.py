"""What the image head's condition holds: linear probes on the backbone's states at the image query tokens of relation
prompts (docs/quality.md, "The heads alone").

    python benchmarks/condition_probe.py --model shapes --threads 1

For the first `--train` relation prompts of the world's train split and the first `--validation` of its validation
split ("a red circle to the left of a yellow square"), the backbone encodes each prompt the way the text-to-image
pipeline does (its `encode_prompt`: the states at the Nq image query tokens, [Nq, dim], the image head's
condition). Logistic regressions (scikit-learn, L2 C=0.1, standardised features) learn five labels from the train
prompts' states and are scored on the validation prompts': the first object's colour and shape, the second's, and the
relation. Two feature sets: all Nq states flattened, and their mean (what the head's adaLN receives). A label read at
~100% means the condition holds it linearly, so a head that draws it wrong is failing to use it, not missing it.
~1 min on one core of a 2-core AVX2 AMD EPYC; JSON: benchmarks/results/condition_probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from multimodal import TextToImagePipeline
from multimodal.data.world import sample_image, split_seed

LABELS = ("colour A", "shape A", "colour B", "shape B", "relation")


def relation_prompts(split: str, n: int) -> tuple[list[str], np.ndarray]:
    """The first n relation captions of a split -> (captions, labels [n, 5] str, in LABELS order)."""
    captions, labels, i = [], [], 0
    while len(captions) < n:
        sample = sample_image(split_seed(split, i))
        i += 1
        if sample.kind != "relation":
            continue
        a, b = sample.clauses.objects
        captions.append(sample.clauses.caption())
        labels.append((a.colour, a.shape, b.colour, b.shape, sample.clauses.relation))
    return captions, np.array(labels)


@torch.no_grad()
def conditions(pipe: TextToImagePipeline, captions: list[str], batch: int = 128) -> torch.Tensor:
    """Captions -> the image head's conditions [n, Nq, dim] float32 (the pipeline's own `encode_prompt`)."""
    out = [pipe.encode_prompt(captions[i:i + batch], None, 1, do_cfg=False)[0].float()
           for i in range(0, len(captions), batch)]
    return torch.cat(out)


def probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> dict[str, float]:
    """Validation accuracy of one logistic regression per label on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (val_x - mean) / std
    return {name: float(LogisticRegression(max_iter=300, C=0.1).fit(a, train_y[:, k]).score(b, val_y[:, k]))
            for k, name in enumerate(LABELS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="saved pipeline folder or built-in name")
    parser.add_argument("--train", type=int, default=3000, help="train-split relation prompts the probes learn from")
    parser.add_argument("--validation", type=int, default=500, help="validation-split relation prompts scored")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "condition_probe.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = TextToImagePipeline.from_pretrained(args.model)
    pipe.model.eval()
    train_caps, train_y = relation_prompts("train", args.train)
    val_caps, val_y = relation_prompts("validation", args.validation)
    train_c, val_c = conditions(pipe, train_caps), conditions(pipe, val_caps)       # [n, Nq, dim]
    rows = {"query states, flattened": probe(train_c.flatten(1).numpy(), train_y, val_c.flatten(1).numpy(), val_y),
            "mean of the query states": probe(train_c.mean(1).numpy(), train_y, val_c.mean(1).numpy(), val_y)}
    seconds = time.perf_counter() - start
    print(f"linear probes on the image condition [{train_c.shape[1]} x {train_c.shape[2]}] of {args.model}: "
          f"{args.train} train / {args.validation} validation relation prompts, {seconds:.0f} s\n")
    print("| features | " + " | ".join(LABELS) + " |")
    print("|---" * (len(LABELS) + 1) + "|")
    for name, accs in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * accs[k]:.1f}%" for k in LABELS) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": vars(args), "condition_shape": list(train_c.shape[1:]),
                                          "validation_accuracy": rows, "seconds": seconds}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
