"""Scoring files with a batch method (MuSc): subsets of the inputs instead of independent chunks.

An image's score depends on the images it is scored with, so the inputs are cut into the
method's subsets (`methods.base.subsets`: consecutive, balanced, from the whole input list) and
each subset is scored as one batch:

  embedding pass   files read ahead in threads, embedded --batch-size at a time (the same
                   embeddings for any chunk size); a file that cannot be read is one error
                   outcome and is left out of its subset
  scoring          `pipeline.score` over the subset's embeddings
  outputs          rows and (segment) files per image, written atomically, as `runner.score_chunk`

`--resume`: the subsets are cut from all inputs, finished or not, so they are the same as in
the first run; a subset whose images all have rows is skipped, any other is scored again and
yields outcomes only for its unfinished images.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Collection, Iterator, Sequence

from ..data.io import read_ahead
from .runner import Outcome, OutputSpec, ScorerSpec, _read, finish_outcome

TOO_FEW = "musc scores images against each other: this image's subset has fewer than 2 readable images"


def subset_plan(paths: Sequence[Path], subset_size: int) -> list[list[Path]]:
    """The subsets of `paths` (all inputs, in order) that a batch method scores together."""
    from ..methods.base import subsets

    return [[paths[i] for i in part] for part in subsets(len(paths), subset_size)]


def score_subsets(pipeline, paths: Sequence[Path], spec: ScorerSpec, output: OutputSpec, batch_size: int = 1,
                  done: Collection[Path] = ()) -> Iterator[Outcome]:
    """Outcomes for every path of `paths` not in `done`, in order, each subset scored as a whole."""
    done = set(done)
    for members in subset_plan(paths, pipeline.options.subset_size):
        if all(p in done for p in members):
            continue
        yield from score_subset(pipeline, members, spec, output, batch_size, done)


def embed_subset(pipeline, members: Sequence[Path], max_pixels: int, batch_size: int, keep_images: bool):
    """The embedding pass of one subset: (embeddings per chunk, readable paths, errors, images)."""
    parts, readable, errors, images = [], [], {}, {}
    reads = read_ahead(members, lambda p: _read(p, max_pixels), ahead=max(2 * batch_size, 8))
    with contextlib.closing(reads):
        while chunk := list(itertools.islice(reads, batch_size)):
            good = [(p, im) for p, im in chunk if not isinstance(im, str)]
            errors.update({p: im for p, im in chunk if isinstance(im, str)})
            if good:
                parts.append(pipeline.embed([im for _, im in good]))
                readable.extend(p for p, _ in good)
                if keep_images:
                    images.update(good)
    return parts, readable, errors, images


def score_subset(pipeline, members: Sequence[Path], spec: ScorerSpec, output: OutputSpec, batch_size: int = 1,
                 done: Collection[Path] = ()) -> list[Outcome]:
    """Embed, score and write one subset; outcomes of its paths not in `done`, in order."""
    t = time.perf_counter()
    parts, readable, errors, images = embed_subset(pipeline, members, output.max_pixels, batch_size,
                                                   keep_images=output.out is not None)
    outcomes = {p: Outcome(p, error=errors.get(p)) for p in members}
    if len(readable) < 2:
        for p in readable:
            outcomes[p].error = TOO_FEW
    else:
        results = pipeline.score(pipeline.concat_embeddings(parts))
        ms = (time.perf_counter() - t) * 1000.0 / len(readable)
        for p, res in zip(readable, results):
            if p not in done:
                finish_outcome(outcomes[p], pipeline, spec, output, res, images.get(p), ms)
    return [outcomes[p] for p in members if p not in done]
