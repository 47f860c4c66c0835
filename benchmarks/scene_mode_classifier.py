"""Can a backbone learn the detection scenes' mode at all? An image-level classifier on the built-in scenes.

Trains ``unireplknet_a`` from scratch (global average pooling + linear head, AdamW, batch 16, horizontal flips)
to predict each training scene's mode (the marker's: 0 or 1) from the whole image, and prints the running
training accuracy and the accuracy on the validation scenes every ``--every`` steps. This is the easiest form
of the question the detector must answer (no boxes, no RoIs, one label per image): a cue that this classifier
cannot learn in a few hundred steps will not be read by the detector within the recipe's budget either.

    python benchmarks/scene_mode_classifier.py --cue beacon --lr 5e-4 --steps 300
    python benchmarks/scene_mode_classifier.py --cue glyph --train-images 14400 --lr 2e-3
    # save the trained classifier; its backbone then starts a detector (train --task detection --finetune FILE)
    python benchmarks/scene_mode_classifier.py --cue beacon --steps 150 --save runs/mode_classifier.pt
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch


def scenes(cue: str, train_images: int, size: int) -> dict[str, list[tuple[torch.Tensor, int]]]:
    """The built-in scenes' train and val images as normalized (3, H, W) tensors with their modes."""
    from unireplknet.data.coco import CocoDetection
    from unireplknet.data.datasets import cache_dir
    from unireplknet.data.synth_detection import image_modes, scene_splits, synth_coco_root, write_synth_coco
    from unireplknet.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

    root = synth_coco_root(cache_dir(), size, train_images, cue=cue)
    write_synth_coco(root, size=size, splits=scene_splits(train_images), cue=cue)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    out = {}
    for split in ("train", "val"):
        data = CocoDetection(root, split)
        mode = image_modes(data.coco)
        items = []
        for i, image_id in enumerate(data.image_ids):
            if image_id in mode:
                image = torch.from_numpy(np.array(data.load_image(i))).permute(2, 0, 1).float() / 255
                items.append(((image - mean) / std, mode[image_id]))
        out[split] = items
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cue", default="glyph", help="glyph, colour or beacon (task_args.scene_cue)")
    p.add_argument("--train-images", type=int, default=1200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the trained classifier's state dict here (a classification checkpoint)")
    a = p.parse_args()

    import unireplknet

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    data = scenes(a.cue, a.train_images, a.size)
    train, val = data["train"], data["val"]
    vx, vy = torch.stack([x for x, _ in val]), torch.tensor([y for _, y in val])
    model = unireplknet.create_model("unireplknet_a", num_classes=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    order: list[int] = []
    hits: list[bool] = []
    t0 = time.time()
    for step in range(1, a.steps + 1):
        if len(order) < a.batch_size:
            order += rng.sample(range(len(train)), len(train))
        batch, order = order[:a.batch_size], order[a.batch_size:]
        x = torch.stack([train[i][0] for i in batch])
        y = torch.tensor([train[i][1] for i in batch])
        if rng.random() < 0.5:
            x = x.flip(-1)
        model.train()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hits += (logits.argmax(1) == y).tolist()
        if step % a.every == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(vx).argmax(1) == vy).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}  train acc (last 400) {100 * np.mean(hits[-400:]):.1f}%  "
                  f"val acc {100 * accuracy:.1f}% ({len(val)} scenes)  {time.time() - t0:.0f} s", flush=True)
    if a.save:
        from unireplknet.utils.atomic import atomic_file

        with atomic_file(a.save) as f:
            torch.save({"model": model.state_dict()}, f)
        print(f"classifier saved to {a.save}")


if __name__ == "__main__":
    main()
