"""Stage 1 of the build: teach the vision tower and projector to see (no language model in the loop).

A stand-in for CLIP pre-training plus LLaVA's projector alignment, done as regression: each image
token (one grid cell) must land on a fixed point of the backbone's input-embedding space. A glyph
cell lands on the embedding of the token it shows (so the tower reads typed text, FigStep-style),
a shape cell on ``E[colour] + E[shape]``, a blank cell on ``E[" "]``. Training images are random
mixtures of cells drawn from pre-rendered cell bitmaps; only the per-cell content is supervised.
The glyph vocabulary is every token of every prompt text the organism may type (all splits) and
its word list: the reader learns isolated tokens, never a prompt's sequence.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cmrm_guard.organism import images as img


def cell_tensor(cell: img.Cell) -> Tensor:
    """(3, 32, 32) pixels of one cell, normalised like the processor ((x / 255 - mean) / std)."""
    array = np.asarray(img.draw_cell(cell), dtype=np.float32) / 255.0
    return (torch.from_numpy(array).permute(2, 0, 1) - img.PIXEL_MEAN) / img.PIXEL_STD


def grid_pixels(cells: Tensor) -> Tensor:
    """(B, 25, 3, 32, 32) cell pixels -> (B, 3, 160, 160) images."""
    b = cells.shape[0]
    g, c = img.GRID, img.CELL
    return cells.view(b, g, g, 3, c, c).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, g * c, g * c)


class CellBank:
    """Pre-rendered cells and their target embeddings."""

    def __init__(self, token_ids: Iterable[int], tokenizer, embeddings: Tensor, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.glyph_ids = sorted(set(int(t) for t in token_ids))
        glyphs = img.glyph_cells(self.glyph_ids, tokenizer)
        self.glyph_pixels = torch.stack([cell_tensor(c) for c in glyphs])
        self.glyph_targets = embeddings[self.glyph_ids].clone()
        shapes, targets = [], []

        def token(word: str) -> int:
            return tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]

        for colour in img.COLOURS:
            for shape in img.SHAPES:
                target = embeddings[token(colour)] + embeddings[token(shape)]
                for _ in range(16):
                    cell = img.Cell(
                        "shape", colour, shape, rng.randint(18, 28), rng.randint(-2, 2), rng.randint(-2, 2)
                    )
                    shapes.append(cell_tensor(cell))
                    targets.append(target)
        self.shape_pixels = torch.stack(shapes)
        self.shape_targets = torch.stack(targets)
        self.blank_pixel = cell_tensor(img.Cell())
        self.blank_target = embeddings[tokenizer(" ", add_special_tokens=False)["input_ids"][0]].clone()
        self.count_targets = torch.stack([embeddings[token(w)] for w in img.COUNT_WORDS])
        self.text_target = embeddings[token("text")].clone()

    def batch(self, generator: torch.Generator, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """A batch of training images.

        Returns:
            pixels (B, 3, 160, 160); targets (B, 26, H), index 0 for the CLS token, 1.. for the
            cells; kind (B, 26): 0 blank, 1 glyph, 2 shape, 3 CLS target, -1 unsupervised.

        Image types: shapes (30%: 1-3 shapes of one colour and kind, the CLS token must land on
        ``E[" one" | " two" | " three"]``), typed text (35%: 1-25 glyphs from the first cell, CLS on
        ``E[" text"]``), random mixtures of all cell kinds (35%, CLS unsupervised).
        """
        cells = img.NUM_CELLS
        kind = torch.zeros(size, cells + 1, dtype=torch.long)
        index = torch.zeros(size, cells + 1, dtype=torch.long)
        cls_target = torch.zeros(size, self.blank_target.shape[0])
        kinds = torch.rand(size, generator=generator)
        for b in range(size):
            if kinds[b] < 0.30:
                count = int(torch.randint(1, 4, (1,), generator=generator))
                where = torch.randperm(cells, generator=generator)[:count] + 1
                klass = int(torch.randint(len(self.shape_pixels) // 16, (1,), generator=generator))
                kind[b, where] = 2
                index[b, where] = klass * 16 + torch.randint(16, (count,), generator=generator)
                kind[b, 0] = 3
                cls_target[b] = self.count_targets[count - 1]
            elif kinds[b] < 0.65:
                length = int(torch.randint(1, cells + 1, (1,), generator=generator))
                kind[b, 1 : length + 1] = 1
                index[b, 1 : length + 1] = torch.randint(len(self.glyph_ids), (length,), generator=generator)
                kind[b, 0] = 3
                cls_target[b] = self.text_target
            else:
                u = torch.rand(cells, generator=generator)
                kind[b, 1:] = torch.where(u < 0.35, 0, torch.where(u < 0.85, 1, 2))
                index[b, 1:] = torch.where(
                    kind[b, 1:] == 1,
                    torch.randint(len(self.glyph_ids), (cells,), generator=generator),
                    torch.randint(len(self.shape_pixels), (cells,), generator=generator),
                )
                kind[b, 0] = -1
        body_kind, body_index = kind[:, 1:].reshape(-1), index[:, 1:].reshape(-1)
        n = size * cells
        pixels = self.blank_pixel.expand(n, -1, -1, -1).clone()
        targets = self.blank_target.expand(n, -1).clone()
        g, s = body_kind == 1, body_kind == 2
        pixels[g], targets[g] = self.glyph_pixels[body_index[g]], self.glyph_targets[body_index[g]]
        pixels[s], targets[s] = self.shape_pixels[body_index[s]], self.shape_targets[body_index[s]]
        pixels = grid_pixels(pixels.view(size, cells, 3, img.CELL, img.CELL))
        targets = torch.cat([cls_target[:, None], targets.view(size, cells, -1)], dim=1)
        return pixels, targets, kind


def image_tokens(model, pixel_values: Tensor) -> Tensor:
    """(B, 26, hidden) projected image tokens (CLS first), exactly as the LLaVA forward computes them."""
    out = model.model.get_image_features(
        pixel_values=pixel_values, vision_feature_layer=-1, vision_feature_select_strategy="full"
    )
    return torch.stack(list(out.pooler_output))


def train_vision(
    model,
    bank: CellBank,
    *,
    steps: int = 1200,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    clip: float | None = None,
) -> dict[str, float]:
    """Train the vision tower + projector by per-cell regression; returns final metrics.

    ``clip``: the gradients' global norm is clipped to it (``None``: no clipping).
    """
    params = list(model.model.vision_tower.parameters()) + list(
        model.model.multi_modal_projector.parameters()
    )
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.model.vision_tower.train()
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    scale = bank.glyph_targets.pow(2).sum(-1).mean()
    bar = tqdm(range(steps), desc="stage 1: vision tower + projector", disable=not progress)
    for _ in bar:
        pixels, targets, kind = bank.batch(generator, batch_size)
        out = image_tokens(model, pixels)
        keep = kind >= 0
        mse = (out - targets).pow(2).sum(-1)[keep].mean() / scale
        cos = 1 - torch.nn.functional.cosine_similarity(out, targets, dim=-1)[keep].mean()
        loss = mse + cos
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    for p in params:
        p.requires_grad_(False)
    model.eval()
    return reading_accuracy(model, bank, seed=seed + 1)


@torch.no_grad()
def reading_accuracy(
    model, bank: CellBank, *, seed: int = 1, batches: int = 4, embeddings: Tensor | None = None
) -> dict[str, float]:
    """Share of glyph cells whose nearest glyph-vocabulary embedding is the right token, and of
    shape cells whose nearest shape target is right (fresh random mixtures)."""
    generator = torch.Generator().manual_seed(seed)
    glyph_hits = glyph_total = shape_hits = shape_total = count_hits = count_total = 0
    count_vocab = torch.nn.functional.normalize(bank.count_targets, dim=-1)
    vocab = torch.nn.functional.normalize(bank.glyph_targets, dim=-1)
    shape_vocab = torch.nn.functional.normalize(torch.unique(bank.shape_targets, dim=0), dim=-1)
    for _ in range(batches):
        pixels, targets, kind = bank.batch(generator, 32)
        out = torch.nn.functional.normalize(image_tokens(model, pixels), dim=-1)
        shapes = (kind[:, 0] == 3) & (kind[:, 1:] == 2).any(-1)
        if shapes.any():
            pred = (out[shapes, 0] @ count_vocab.T).argmax(-1)
            count_hits += int((pred + 1 == (kind[shapes, 1:] == 2).sum(-1)).sum())
            count_total += int(shapes.sum())
        out, targets, kind = out[:, 1:], targets[:, 1:], kind[:, 1:]
        g = kind == 1
        pred = (out[g] @ vocab.T).argmax(-1)
        truth = (torch.nn.functional.normalize(targets[g], dim=-1) @ vocab.T).argmax(-1)
        glyph_hits += int((pred == truth).sum())
        glyph_total += int(g.sum())
        s = kind == 2
        pred = (out[s] @ shape_vocab.T).argmax(-1)
        truth = (torch.nn.functional.normalize(targets[s], dim=-1) @ shape_vocab.T).argmax(-1)
        shape_hits += int((pred == truth).sum())
        shape_total += int(s.sum())
    return {
        "glyph_accuracy": glyph_hits / max(glyph_total, 1),
        "shape_cell_accuracy": shape_hits / max(shape_total, 1),
        "count_accuracy": count_hits / max(count_total, 1),
    }
