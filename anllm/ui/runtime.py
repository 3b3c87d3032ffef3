"""How the app runs the model: one worker thread per request, under a deadline, stopped when the visitor leaves.

Every tab runs the model through :class:`Worker`: ``work(job)`` runs in its own thread (so rendering and sending
never pause the decode loop and the timings it reports are the loop's alone) and reports through
:meth:`Job.report`; the request's generator reads the reports in batches. Each decoder layer checks the job's
deadline (:class:`TimeUp` inside the forward pass), so even one long prefill stops at the time limit. Closing the
worker (Stop, a closed tab, the end of the request) stops the job at its next report, or within one decoder layer
with ``interrupt=True``, and waits for it, so the model is free when the request ends.

:func:`compare_stream` is the side-by-side run the Generate, Document and Chat tabs share: several cache modes, one
after the other in one worker, as throttled :class:`CompareState` snapshots. The settings a request arrives with
(:func:`make_generation_config`, :func:`ui_number`, :func:`check_text`) and :data:`MODEL_SLOT`, the one queue slot
every model run shares, are here too. Nothing here imports gradio.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from anllm.config import AnLLMError, GenerationConfig
from anllm.generation import GenerationResponse, stream_generate
from anllm.models import LoadedModel
from anllm.ui.launch import DEFAULT_MAX_REQUEST_S

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 1024  # app-side cap: a public demo must not be asked for unbounded work
MAX_PROMPT_CHARS = 20_000
MAX_REQUEST_S = DEFAULT_MAX_REQUEST_S  # compute seconds of one request, all its modes together (ANLLM_MAX_REQUEST_S)
# every event that runs the model takes this one queue slot: runs of all tabs go one at a time, so timings are honest
MODEL_SLOT = {"concurrency_id": "model", "concurrency_limit": 1}


# -- Spaces -----------------------------------------------------------------------------------------------------
def maybe_gpu(fn: Callable, duration: int | Callable[..., int] = 120) -> Callable:
    """``spaces.GPU(duration=...)(fn)`` when the ``spaces`` package is installed (ZeroGPU), else ``fn`` unchanged.

    ``duration``: seconds, or a callable taking ``fn``'s arguments (see :func:`anllm.zerogpu.gpu_duration`).
    """
    try:
        import spaces  # noqa: PLC0415 - optional, only on Hugging Face Spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


# -- settings ---------------------------------------------------------------------------------------------------
def ui_number(value: Any, name: str, kind: type) -> Any:
    """``value`` from a UI field (a float, an int or a string) as ``kind`` (int or float).

    Raises:
        AnLLMError: naming the setting, when it is empty or not such a number.
    """
    try:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError
        x = float(value)
        if kind is int:
            if x != int(x):
                raise ValueError
            return int(x)
        return x
    except (TypeError, ValueError, OverflowError):
        raise AnLLMError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def check_text(text: Any, what: str, empty: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """``text`` if it is a non-blank string of at most ``max_chars`` characters.

    Raises:
        AnLLMError: ``empty`` for a blank text; one naming ``what`` and both lengths for a long one.
    """
    if not isinstance(text, str) or not text.strip():
        raise AnLLMError(empty)
    if len(text) > max_chars:
        raise AnLLMError(f"the {what} has {len(text):,} characters; this app accepts {max_chars:,}")
    return text


def make_generation_config(
    *,
    max_new_tokens: Any = 96,
    temperature: Any = 0.0,
    top_p: Any = 1.0,
    top_k: Any = 0,
    repetition_penalty: Any = 1.0,
    seed: Any = 0,
    chat: bool = True,
    max_new_tokens_cap: int = MAX_NEW_TOKENS,
) -> GenerationConfig:
    """Build a :class:`GenerationConfig` from UI values (numbers may arrive as floats or strings).

    Raises:
        AnLLMError: naming the setting and the allowed range.
    """
    n = ui_number(max_new_tokens, "max new tokens", int)
    if not 1 <= n <= max_new_tokens_cap:
        raise AnLLMError(f"max new tokens must be between 1 and {max_new_tokens_cap}, got {n}")
    s = None if seed is None or seed == "" else ui_number(seed, "seed", int)
    return GenerationConfig(
        max_new_tokens=n,
        temperature=ui_number(temperature, "temperature", float),
        top_p=ui_number(top_p, "top-p", float),
        top_k=ui_number(top_k, "top-k", int),
        repetition_penalty=ui_number(repetition_penalty, "repetition penalty", float),
        seed=None if s is None or s < 0 else s,
        chat=bool(chat),
    )


# -- the worker -------------------------------------------------------------------------------------------------
class TimeUp(Exception):
    """Raised inside the model's forward pass, in the worker's thread, once the job's deadline has passed."""


class Stopped(Exception):
    """Raised by :meth:`Job.report` once the job was asked to stop (Stop, a closed tab)."""


@contextlib.contextmanager
def deadline_hooks(model: torch.nn.Module, job: Job) -> Iterator[None]:
    """Make every decoder layer of ``model`` raise :class:`TimeUp` in this thread once ``job.deadline`` has passed.

    Checked per layer, so even one long prefill forward stops within about one layer's time. Only the calling
    thread is affected (the app runs one generation at a time; other threads may use the model meanwhile).
    """
    me = threading.get_ident()

    def check(module, args):
        if threading.get_ident() == me and time.perf_counter() > job.deadline:
            raise TimeUp

    layers = getattr(getattr(model, "model", None), "layers", None) or [model]
    handles = [layer.register_forward_pre_hook(check) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Job:
    """What a :class:`Worker`'s ``work`` gets: :meth:`report`, the stop flag and the deadline it may move."""

    def __init__(self, time_limit_s: float | None) -> None:
        self.started = time.perf_counter()
        self.time_limit_s = time_limit_s
        self.deadline = self.started + time_limit_s if time_limit_s is not None else math.inf  # perf_counter time
        self.stop = threading.Event()
        self.reports: queue.Queue = queue.Queue()

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    def report(self, event: Any) -> None:
        """Hand ``event`` to the request; raises :class:`Stopped` once the request asked the job to stop."""
        if self.stop.is_set():
            raise Stopped
        self.reports.put(event)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``done`` (``value`` is what ``work`` returned), ``error`` (``value`` is an
    :class:`AnLLMError` for the visitor), ``time_up`` (a :class:`TimeUp` that ``work`` did not catch) or
    ``stopped`` (asked to stop)."""

    kind: Literal["done", "error", "time_up", "stopped"]
    value: Any = None


class Worker:
    """``work(job)`` in a daemon thread, the model's decoder layers checking the job's deadline.

    Args:
        model: the model ``work`` runs (its decoder layers get the deadline check).
        work: does the job; reports through ``job.report`` and returns the result.
        time_limit_s: seconds from now to the deadline (None = none, unless ``work`` sets ``job.deadline``).
        interrupt: closing also moves the deadline to the past, so the job stops within one decoder layer rather
            than at its next report (for long single passes; a decode loop that must finish its token, such as a
            chat turn that keeps its answer so far, leaves it off).
        what: how an unexpected failure is described to the visitor ("{what} failed: ...") and in the log.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        work: Callable[[Job], Any],
        *,
        time_limit_s: float | None = None,
        interrupt: bool = False,
        what: str = "the request",
    ) -> None:
        self.job = Job(time_limit_s)
        self.interrupt, self.what = interrupt, what
        self.outcome: Outcome | None = None  # set by batches() with the last batch, once the job has ended
        self._model, self._work = model, work
        self._hooks = time_limit_s is not None or interrupt  # else work installs none of its own either
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        job = self.job
        outcome = Outcome("error", AnLLMError(f"{self.what} was interrupted"))  # unless set below
        try:
            with deadline_hooks(self._model, job) if self._hooks else contextlib.nullcontext():
                outcome = Outcome("done", self._work(job))
        except Stopped:
            outcome = Outcome("stopped")
        except TimeUp:
            outcome = Outcome("stopped" if job.stopping else "time_up")
        except AnLLMError as e:
            outcome = Outcome("error", e)
        except Exception as e:  # noqa: BLE001 - reported to the UI; the traceback goes to the log only
            logger.exception("%s failed", self.what)
            outcome = Outcome("error", AnLLMError(f"{self.what} failed: {type(e).__name__}: {e}"))
        finally:
            job.reports.put(outcome)  # the last item, after every report

    def batches(self, wait_s: float | None = None) -> Iterator[list]:
        """Yield what the job reported since the last batch, oldest first; an empty batch when ``wait_s`` passed
        without a report (``None``: wait for one). The last batch, with every report left, comes once the job has
        ended, with :attr:`outcome` set.
        """
        while self.outcome is None:
            try:
                items = [self.job.reports.get(timeout=wait_s)]
            except queue.Empty:
                items = []
            while True:  # drain what is there without waiting
                try:
                    items.append(self.job.reports.get_nowait())
                except queue.Empty:
                    break
            if items and isinstance(items[-1], Outcome):
                self.outcome = items.pop()
            yield items

    def close(self) -> None:
        """Stop the job (at its next report, or its next decoder layer with ``interrupt``) and wait for it."""
        self.job.stop.set()
        if self.interrupt:
            self.job.deadline = -math.inf  # the next decoder layer raises: a long one-pass prefill stops too
        self._thread.join(timeout=60)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- side-by-side runs ------------------------------------------------------------------------------------------
@dataclass
class ModeRun:
    """What one mode produced so far: the per-token responses of the decode loop, verbatim."""

    mode: str
    responses: list[GenerationResponse] = field(default_factory=list)
    error: str | None = None
    done: bool = False

    @property
    def last(self) -> GenerationResponse | None:
        return self.responses[-1] if self.responses else None

    @property
    def text(self) -> str:
        return "".join(r.text for r in self.responses)


@dataclass
class CompareState:
    """A snapshot of a side-by-side run; ``runs`` are in the order the modes were asked for."""

    runs: list[ModeRun]
    active: int = 0  # index of the mode being generated
    finished: bool = False
    plots_due: bool = True  # the figures changed enough to be re-sent

    def run(self, mode: str) -> ModeRun:
        return next(r for r in self.runs if r.mode == mode)

    def by_mode(self) -> dict[str, list[GenerationResponse]]:
        """``{mode: responses}`` for the figure builders in :mod:`anllm.plots`."""
        return {run.mode: run.responses for run in self.runs}


Mode = str | tuple[str, Callable[[], Iterator[GenerationResponse]]]
_MODE_DONE = object()


def _run_modes(lm: LoadedModel, prompt: Any, modes: list[Mode], gen: GenerationConfig) -> Callable[[Job], None]:
    """The work of :func:`compare_stream`: each mode to completion, one after the other, every response reported.

    With a time limit, mode ``i`` of ``n`` must finish by ``(i + 1) / n`` of it (time a mode leaves unused goes to
    the next); a mode cut off reports a message and keeps the tokens it made.
    """

    def work(job: Job) -> None:
        for i, mode in enumerate(modes):
            if job.stopping:
                return
            if job.time_limit_s is not None:
                job.deadline = job.started + job.time_limit_s * (i + 1) / len(modes)
            if isinstance(mode, tuple):
                name, stream = mode[0], mode[1]()
            else:
                name, stream = mode, stream_generate(lm, prompt, mode, gen)
            try:
                for r in stream:
                    job.report((i, r))
            except TimeUp:
                if job.stopping:
                    raise
                limit = f"{job.time_limit_s:g} s a request, shared by the cache modes"
                msg = f"stopped at this server's time limit ({limit}); ask for fewer tokens or a shorter prompt"
                job.report((i, AnLLMError(msg)))
            except AnLLMError as e:
                job.report((i, e))
                job.report((i, _MODE_DONE))
                return  # a bad prompt or setting fails the same way in every mode: report it once
            except Stopped:
                raise
            except Exception as e:  # noqa: BLE001 - reported to the UI; the traceback goes to the log only
                logger.exception("generation failed in mode %s", name)
                job.report((i, AnLLMError(f"generation failed in mode {name!r}: {type(e).__name__}: {e}")))
            finally:
                stream.close()  # a chat turn commits the answer so far
            job.report((i, _MODE_DONE))

    return work


def compare_stream(
    lm: LoadedModel,
    prompt: Any,
    modes: Sequence[Mode],
    gen: GenerationConfig,
    *,
    interval_s: float = 0.1,
    plot_interval_s: float = 0.5,
    time_limit_s: float | None = None,
) -> Iterator[CompareState]:
    """Generate ``prompt`` under each mode in turn (in one :class:`Worker`) and yield snapshots at most every
    ``interval_s`` seconds.

    A mode is a cache mode (``stream_generate(lm, prompt, mode, gen)``) or a ``(name, start)`` pair whose
    ``start()`` returns the response iterator to run instead (a saved document, a chat turn); make ``start`` a
    generator function so that its errors are reported like the decode loop's.

    Closing this generator stops the worker after its current token and waits for it, so a cancelled request frees
    the model before the next one starts. ``plots_due`` is set at most every ``plot_interval_s`` seconds and
    whenever a mode finishes. With ``time_limit_s`` the modes share that much time; a mode cut off gets an error.
    """
    state = CompareState([ModeRun(m if isinstance(m, str) else m[0]) for m in modes])
    last_yield = last_plot = time.perf_counter()
    with Worker(lm.model, _run_modes(lm, prompt, list(modes), gen), time_limit_s=time_limit_s) as worker:
        for items in worker.batches(wait_s=interval_s):
            mode_finished = False
            for i, item in items:
                if item is _MODE_DONE:
                    state.runs[i].done, mode_finished = True, True
                    state.active = min(i + 1, len(modes) - 1)
                elif isinstance(item, AnLLMError):
                    state.runs[i].error = str(item)
                else:
                    state.runs[i].responses.append(item)
                    state.active = i
            now = time.perf_counter()
            if worker.outcome is not None:
                if worker.outcome.kind == "error" and not state.runs[state.active].error:  # a mode that failed to start
                    state.runs[state.active].error = str(worker.outcome.value)
                state.finished = state.plots_due = True
                yield state
                return
            if items and now - last_yield >= interval_s:
                state.plots_due = mode_finished or now - last_plot >= plot_interval_s
                if state.plots_due:
                    last_plot = now
                last_yield = now
                yield state
