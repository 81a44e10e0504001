"""`--engine ray` for batch methods (MuSc): embeddings in parallel actors, one task per subset.

The driver cuts the inputs into the method's subsets exactly as the local engine does
(`subsets.subset_plan`), then for each subset

    embed      the subset's --batch-size chunks, spread over the actors (each actor loads the
               model once); an actor reads and checks its chunk's files itself, an unreadable
               file comes back as its error line
    score      one actor task per subset: the subset's embeddings (through the object store)
               are joined and scored with `pipeline.score`, and that task writes the
               subset's maps / overlays / masks (atomic writes) and returns its rows

so the rows, files and error lines equal the local engine's. At most `LOOKAHEAD` subsets are
in flight, which bounds the object store to a few subsets' embeddings. Rows come back in input
order for `cli._run` to print and record; `done` (--resume) works as in `subsets`.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Collection, Iterator, Sequence

from ..errors import FadeError
from .runner import Outcome, OutputSpec, ScorerSpec

LOOKAHEAD = 2  # subsets embedded ahead of the one being scored


class _SubsetWorker:
    """A Ray actor: the method's pipeline, loaded once; embeds chunks and scores subsets."""

    def __init__(self, spec: ScorerSpec, output: OutputSpec, text_cache, cwd: str, threads: int | None):
        import torch

        from .runner import build_pipeline, load_spec_backbone

        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative inputs and --out mean what they mean on the driver
        if threads:
            torch.set_num_threads(threads)
        backbone = load_spec_backbone(spec)
        # the driver's cache, memo included: the language prompts are answered from memory
        self.pipeline = build_pipeline(spec, backbone, None, text_cache.bind(backbone))
        self.spec, self.output = spec, output

    def embed(self, paths: list[str]):
        """(embeddings of the readable files or None, readable paths, {path: error})."""
        from .subsets import embed_subset

        parts, readable, errors, _ = embed_subset(self.pipeline, [Path(p) for p in paths], self.output.max_pixels,
                                                  batch_size=len(paths), keep_images=False)
        part = parts[0].to("cpu") if parts else None  # through the object store on the host
        return part, [str(p) for p in readable], {str(p): e for p, e in errors.items()}

    def score(self, members: list[str], done: list[str], *embedded) -> list[tuple[str, dict | None, str | None]]:
        """Join the subset's embedded chunks, score them together, write outputs: (path, row, error)."""
        import time

        from ..data.io import load_image
        from ..errors import ImageError
        from .runner import finish_outcome
        from .subsets import TOO_FEW

        t = time.perf_counter()
        outcomes = {p: Outcome(Path(p)) for p in members}
        parts, readable = [], []
        for part, paths, errors in embedded:
            for p, e in errors.items():
                outcomes[p].error = e
            if part is not None:
                parts.append(part)
                readable.extend(paths)
        if len(readable) < 2:
            for p in readable:
                outcomes[p].error = TOO_FEW
        else:
            joined = self.pipeline.concat_embeddings(parts).to(self.pipeline.backbone.device)
            results = self.pipeline.score(joined)
            ms = (time.perf_counter() - t) * 1000.0 / len(readable)
            for p, res in zip(readable, results):
                if p in done:
                    continue
                image = None
                if self.output.out is not None:  # the overlay needs the image: read it again here
                    try:
                        image = load_image(Path(p), self.output.max_pixels)
                    except ImageError as exc:
                        outcomes[p].error = str(exc)
                        continue
                finish_outcome(outcomes[p], self.pipeline, self.spec, self.output, res, image, ms)
        return [(p, outcomes[p].row, outcomes[p].error) for p in members if p not in done]


def run_ray_subsets(spec: ScorerSpec, output: OutputSpec, paths: Sequence[Path], subset_size: int, *,
                    batch_size: int = 1, actors: int | None = None, address: str | None = None,
                    text_cache=None, done: Collection[Path] = (), log=None,
                    quiet: bool = False) -> Iterator[Outcome]:
    """Outcomes for every path not in `done`, in input order, scored subset by subset on Ray."""
    from .ray import _init_ray, actor_resources, ray_failure, require_ray
    from .subsets import subset_plan

    done = set(done)
    plan = [members for members in subset_plan(list(paths), subset_size) if not all(p in done for p in members)]
    if not plan:
        return
    ray = require_ray()
    started = _init_ray(ray, address, quiet)
    try:
        chunks = sum(-(-len(m) // batch_size) for m in plan)
        n, cpus, gpus, threads = actor_resources(ray.cluster_resources(), ray.nodes(), actors, spec.device)
        n = min(n, chunks)
        if log:
            log(f"ray: {n} actor(s) × ({cpus:g} CPU{', 1 GPU' if gpus else ''}), {len(plan)} subset(s), "
                f"embedding batches of {batch_size}")
        if gpus and spec.device.startswith("cuda"):
            spec = replace(spec, device="cuda")  # an actor sees only its own GPU, as cuda:0
        # a dead actor is restarted (it loads the model again) and its calls retried: outputs are
        # written atomically with the same content, so a retried subset is harmless
        worker = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=2, max_task_retries=2)(_SubsetWorker)
        shared = ray.put(text_cache)
        pool = [worker.remote(spec, output, shared, os.getcwd(), threads) for _ in range(n)]
        turn = iter(range(10**12))

        def submit(members: list[Path]):
            names = [str(p) for p in members]
            embedded = [pool[next(turn) % n].embed.remote(names[i : i + batch_size]) for i in range(0, len(names), batch_size)]
            mine = [str(p) for p in members if p in done]
            return pool[next(turn) % n].score.remote(names, mine, *embedded)

        waiting = deque()
        pending = iter(plan)
        for members in pending:
            waiting.append(submit(members))
            if len(waiting) > LOOKAHEAD:
                break
        while waiting:
            for p, row, error in ray.get(waiting.popleft()):
                yield Outcome(Path(p), row=row, error=error)
            members = next(pending, None)
            if members is not None:
                waiting.append(submit(members))
    except FadeError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an actor that cannot load the model on its node
        raise ray_failure(exc) from None
    finally:
        if started:
            ray.shutdown()
