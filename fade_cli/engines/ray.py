"""`--engine ray`: the same `fade detect` / `fade segment` over a Ray cluster, with Ray Data.

The driver (the `fade` process) lists the inputs, loads the model once to validate the options,
embeds the prompts and builds the reference bank exactly as the local engine does, then runs

    ray.data.from_items(chunks)            on the driver: the inputs cut into chunks of
                                           --batch-size, in input order (as the local engine)
      .map(_read_chunk)                    CPU tasks: decode and check each file; a file that
                                           cannot be read becomes an error entry, not a failure
      .map_batches(_Scorer, ActorPoolStrategy(size=--actors))
                                           actors: model, prompt embeddings and reference bank
                                           loaded once per actor; `runner.score_chunk` scores a
                                           chunk and writes its maps / overlays / masks
      -> one row per input back on the driver, re-ordered by input index and yielded as
         `runner.Outcome`s as soon as the next one in input order is there

so that `cli/score.py` prints the rows and error lines and appends the manifest exactly as for
`--engine local`. Nothing user-supplied is unpickled: the driver reads the reference bank
(`allow_pickle=False`) and it travels through the object store with the text embeddings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import FadeError, UsageError
from ..prompts.text import TextEncoderCache
from .runner import Outcome, OutputSpec, ScorerSpec

INSTALL_HINT = '--engine ray needs Ray Data, which is not installed: pip install "fade-cli[ray]"'
READ_TASK_CPUS = 0.25  # decoding a chunk of images is light next to scoring it
MAX_BLOCKS = 1000


def require_ray():
    """The `ray` module with Ray Data, or a UsageError saying how to install it (exit 2)."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not just the core
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def _read_chunk(row: dict, max_pixels: int) -> dict:
    """Ray Data CPU task: decode one chunk's images with the local engine's checks (`io.load_image`)."""
    from ..errors import ImageError
    from ..data.io import load_image

    pixels, heights, widths, errors = [], [], [], []
    for abs_path in row["abs"]:
        data, h, w, error = b"", 0, 0, ""
        try:
            arr = np.ascontiguousarray(np.asarray(load_image(Path(abs_path), max_pixels), dtype=np.uint8))
            data, h, w = arr.tobytes(), arr.shape[0], arr.shape[1]
        except ImageError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never fail the job
            error = f"cannot read ({exc.__class__.__name__}: {exc})"
        pixels.append(data)
        heights.append(h)
        widths.append(w)
        errors.append(error)
    return {"idx": list(row["idx"]), "path": list(row["path"]), "pixels": pixels, "height": heights,
            "width": widths, "error": errors}


class _Scorer:
    """Ray Data actor: builds the pipeline once, then scores chunks with `runner.score_chunk`."""

    def __init__(self, spec: ScorerSpec, output: OutputSpec, shared: list, cwd: str, threads: int | None):
        import tempfile

        import ray
        import torch

        from .runner import build_pipeline, load_spec_backbone

        # Relative input and --out paths mean what they mean on the driver (same folder on every node).
        if os.path.isdir(cwd):
            os.chdir(cwd)
        if threads:
            torch.set_num_threads(threads)
        payload = ray.get(shared[0])
        if spec.model_config is not None and not Path(spec.model_config).is_file():
            # the model-config JSON is not on this node's disk: register the driver's copy
            local = Path(tempfile.mkdtemp(prefix="fade-model-")) / Path(spec.model_config).name
            local.write_text(payload["model_config_text"], encoding="utf-8")
            spec = replace(spec, model_config=local)
        backbone = load_spec_backbone(spec)
        # the driver's cache, memo included: the prompts every method encoded there are answered from memory
        cache = payload["text_cache"].bind(backbone)
        self.pipeline = build_pipeline(spec, backbone, payload["bank"], cache)
        self.spec = spec
        self.output = output

    def __call__(self, batch: dict) -> dict:
        """Chunks (each exactly one of the local engine's batches) -> one row per input."""
        from PIL import Image

        from .runner import score_chunk

        idx_out, rows_out, errors_out = [], [], []
        for k in range(len(batch["idx"])):
            paths = [Path(str(p)) for p in batch["path"][k]]
            images: dict = {}
            for p, pixels, h, w, error in zip(paths, batch["pixels"][k], batch["height"][k], batch["width"][k],
                                              batch["error"][k]):
                if error:
                    images[p] = str(error)
                else:
                    arr = np.frombuffer(pixels, dtype=np.uint8).reshape(int(h), int(w), 3)
                    images[p] = Image.fromarray(arr, mode="RGB")
            try:
                outcomes = score_chunk(self.pipeline, paths, self.spec, self.output, images=images)
            except Exception as exc:  # noqa: BLE001 - report the chunk's images, keep the job going
                reason = f"scoring failed ({exc.__class__.__name__}: {exc})"
                outcomes = [Outcome(p, error=images[p] if isinstance(images[p], str) else reason) for p in paths]
            idx_out.extend(int(i) for i in batch["idx"][k])
            rows_out.extend(json.dumps(o.row) if o.row is not None else "" for o in outcomes)
            errors_out.extend(o.error or "" for o in outcomes)
        return {"idx": np.asarray(idx_out, dtype=np.int64), "row": np.array(rows_out, dtype=object),
                "error": np.array(errors_out, dtype=object)}


def actor_resources(cluster: dict, nodes: list[dict], actors: int | None, device: str) -> tuple[int, float, float, int | None]:
    """(actors, CPUs per actor, GPUs per actor, torch threads per actor) for this cluster.

    With GPUs (and --device not cpu): one GPU per actor, by default one actor per GPU. CPU only:
    by default one actor per node; the CPUs, less a little left for the read tasks, are split
    between the actors, and each actor runs that many torch threads.
    """
    gpus = int(cluster.get("GPU", 0))
    if gpus >= 1 and not device.startswith("cpu"):
        return actors or gpus, 1.0, 1.0, None
    node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive", True)]
    node_cpus = [c for c in node_cpus if c > 0] or [float(cluster.get("CPU", 1))]
    actors = actors or len(node_cpus)
    total = sum(node_cpus)
    per = (total - min(1.0, 0.25 * total)) / actors
    smallest = min(node_cpus)
    per = min(per, smallest - min(1.0, 0.25 * smallest))  # one actor must fit on a node
    per = max(0.05, math.floor(per * 20) / 20)  # whole multiples of 0.05 CPU, so that N of them fit
    return actors, per, 0.0, max(1, round(per))


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the duration (Ray's C++ core writes to it directly)."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_ray_logs() -> None:
    for name in ("ray", "ray.data", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")  # tuning hints, not errors


def _keep_stdout_for_rows(quiet: bool) -> None:
    """Ray prints the cluster's error notes (e.g. "task failed, will be retried" when a worker
    dies) on the driver's *stdout*, which here carries only JSON rows: send them to stderr, or
    drop them with --quiet (they stay in Ray's logs)."""
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_fade", False):
        return

    def to_stderr(data, ignore_prefix):
        if not quiet:
            original(dict(data, is_err=True), ignore_prefix)

    to_stderr._fade = True
    ray_worker.print_to_stdstream = to_stderr


def _init_ray(ray, address: str | None, quiet: bool) -> bool:
    """Join `address`, or start a local Ray; False if this process is already connected."""
    if ray.is_initialized():
        return False
    _check_reachable(address)
    _quiet_ray_logs()
    _keep_stdout_for_rows(quiet)
    # Ray's C++ core prints notes (e.g. about Ray Data's own actor arguments) at error level on
    # stderr, which is for `fade: PATH: reason` lines; its logs stay in the Ray session folder.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    handlers = _signal_handlers()
    try:
        with _stderr_silenced():  # and the core's start-up notes
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. no cluster at that address
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise FadeError(f"--ray-address {address or '(none: local Ray)'}: cannot start or join Ray ({first})") from None
    finally:
        # Ray's core installs a SIGTERM handler that aborts the process (exit 134, a stack dump);
        # put fade's back: SIGTERM and Ctrl-C stop cleanly with exit status 130, as locally.
        _restore_signal_handlers(handlers)
    return True


def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """HOST:PORT that nothing answers at: say so now (Ray itself keeps retrying for minutes)."""
    import socket

    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise UsageError(f"--ray-address {address}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise FadeError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        f"start one with `ray start --head`, or leave out --ray-address for a local Ray") from None


def _signal_handlers() -> dict:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def ray_failure(exc: BaseException) -> FadeError:
    """One error line for a Ray job that failed (the remote cause's type and last line)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return FadeError(f"Ray job failed: {cause.__class__.__name__}: {text.splitlines()[-1] if text else ''}")


def run_ray(
    spec: ScorerSpec,
    output: OutputSpec,
    reference_bank,
    paths: Sequence[Path],
    *,
    batch_size: int = 1,
    actors: int | None = None,
    address: str | None = None,
    text_cache: TextEncoderCache | None = None,
    log=None,
    quiet: bool = False,
) -> Iterator[Outcome]:
    """Score `paths` on Ray; yields one Outcome per path, in the order of `paths`.

    address None starts a local Ray instance (shut down at the end); "auto" or "HOST:PORT"
    joins a running cluster. The actors write the output files; the caller prints and records.
    `text_cache` is the driver's cache after building the pipeline: it travels (without the model)
    to every actor, whose pipeline then finds its prompts' embeddings in the cache's memo.
    """
    if not paths:
        return
    ray = require_ray()
    started = _init_ray(ray, address, quiet)
    try:
        import ray.data

        _quiet_ray_logs()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # fade's own progress bar counts images in input order
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        n, cpus, gpus, threads = actor_resources(ray.cluster_resources(), ray.nodes(), actors, spec.device)
        n = min(n, math.ceil(len(paths) / batch_size))  # no idle actors (each one loads the model)
        if threads and os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            threads = int(os.environ["OMP_NUM_THREADS"])  # the driver's explicit setting wins
        if log:
            log(f"ray: {n} actor(s) × ({cpus:g} CPU{', 1 GPU' if gpus else ''}{f', {threads} thread(s)' if threads else ''}), "
                f"batches of {batch_size}, {len(paths)} image(s)")
        if gpus and spec.device.startswith("cuda"):
            spec = replace(spec, device="cuda")  # an actor sees only its own GPU, as cuda:0
        model_text = Path(spec.model_config).read_text(encoding="utf-8") if spec.model_config is not None else None
        shared = ray.put({"bank": reference_bank, "text_cache": text_cache or TextEncoderCache(None),
                          "model_config_text": model_text})
        # One dataset row per chunk of --batch-size inputs, cut as the local engine cuts them: an
        # actor call scores exactly one local batch, so the numbers equal the local engine's.
        starts = range(0, len(paths), batch_size)
        items = [{"idx": list(range(s, min(s + batch_size, len(paths))))} for s in starts]
        for item in items:
            item["path"] = [str(paths[i]) for i in item["idx"]]
            item["abs"] = [str(paths[i].absolute()) for i in item["idx"]]
        ds = (
            ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
            .map(_read_chunk, fn_kwargs={"max_pixels": output.max_pixels}, num_cpus=READ_TASK_CPUS)
            .map_batches(
                _Scorer,
                fn_constructor_kwargs={"spec": spec, "output": output, "shared": [shared], "cwd": os.getcwd(),
                                       "threads": threads},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n),
                num_cpus=cpus,
                num_gpus=gpus,
            )
        )
        waiting: dict[int, Outcome] = {}
        nxt = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for idx, row, error in zip(batch["idx"], batch["row"], batch["error"]):
                i = int(idx)
                waiting[i] = Outcome(paths[i], row=json.loads(row) if row else None, error=str(error) or None)
            while nxt in waiting:  # rows leave in input order as soon as the next one is there
                yield waiting.pop(nxt)
                nxt += 1
        if nxt != len(paths):
            raise FadeError(f"Ray returned results for {nxt + len(waiting)} of {len(paths)} image(s)")
    except FadeError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. an actor that cannot load the model on its node
        raise ray_failure(exc) from None
    finally:
        if started:
            ray.shutdown()
